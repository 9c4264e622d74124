"""Trainer launch: `python -m trainer --config tiny[:method] [--set key=value ...]`.

--config takes a shipped config by name (tiny, demo, teacher, gemma3_270m,
gemma3_1b) or the path of any file defining get_config(); paths in --set
(run_dir, store.url) are relative to the current directory. Bad configs and
store mismatches, a run_dir another trainer owns (RUN_DIR/run.lock) and running
out of device memory print one line (what is wrong and how to fix it) and exit with
status 2; a diverged run (NaN/Inf) exits with 3; SIGINT/SIGTERM saves a
checkpoint, prints where the run resumes and exits with 128 + the signal.
"""

import argparse
import json
import sys

from trainer.model import cli_guard


def main(argv=None) -> int:
    """Parses flags, runs `trainer.training.loop.run`, prints the final summary as JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        required=True,
        help="shipped config name or get_config() file, optionally with "
        "':arg' (e.g. tiny:hldc, gemma3_270m:kd, my_config.py)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set optim.lr=1e-3 (repeatable; default: none)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as JSON and exit (default: train)",
    )
    args = parser.parse_args(argv)
    from trainer.training import memory  # Light (no JAX): checked before JAX reserves memory.

    low_limit = memory.address_space_warning()
    if low_limit:
        print(low_limit, file=sys.stderr, flush=True)
    # Imported here so `--help` stays instant (JAX import is slow), and outside
    # the `try` below, whose handlers need `train`: an import that fails (a
    # broken installation, a hidden package: trainer.model.cli_guard) shows its own
    # traceback instead of being masked by an UnboundLocalError.
    try:
        from trainer.training import config as config_lib
        from trainer.training import loop as train
    except KeyboardInterrupt:
        print("interrupted before training started; nothing was written", file=sys.stderr)
        return 130
    try:
        config = config_lib.load_config(args.config, args.set)
        if args.print_config:
            print(config_lib.to_json(config))
            return 0
        summary = train.run(config)
    except KeyboardInterrupt:  # Before the step loop installed its handler.
        print(
            "interrupted before training started; re-run the same command to start "
            "(or resume from the last checkpoint)",
            file=sys.stderr,
        )
        return 130
    except train.TrainingInterrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + e.signum
    except train.TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # XLA's out-of-memory outside a step (e.g. initialising the state).
        if not memory.is_resource_exhausted(e):
            raise
        print(f"error: out of device memory: {memory.describe(e)}; {memory.HINT}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    cli_guard.protect()
    sys.exit(main())
