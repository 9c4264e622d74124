"""Trainer launch: `python -m trainer --config trainer/configs/tiny.py[:arg] [--set k=v ...]`.

Bad configs and store mismatches print one line (what is wrong and how to fix
it) and exit with status 2; a diverged run (NaN/Inf) exits with status 3.
"""
import argparse
import json
import sys


def main(argv=None) -> int:
    """Parses flags, runs `trainer.training.loop.run`, prints the final summary as JSON."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("--config", required=True,
                        help="get_config() file, optionally with ':arg' (e.g. tiny.py:hldc)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-3 (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit")
    args = parser.parse_args(argv)
    # Imported here so `--help` stays instant (JAX import is slow).
    from trainer.training import config as config_lib
    from trainer.training import loop as train
    try:
        config = config_lib.load_config(args.config, args.set)
        if args.print_config:
            print(config_lib.to_json(config))
            return 0
        summary = train.run(config)
    except train.TrainingDivergedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
