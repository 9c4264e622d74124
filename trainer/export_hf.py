"""CLI: export a model checkpoint of ours as a Hugging Face Gemma3ForCausalLM directory.

    python -m trainer.export_hf --checkpoint PATH --out DIR [--tokenizer SP_MODEL]

PATH: a model checkpoint (a run's export/ or the run directory, a teacher, a
teacher_dump.convert output). DIR must be new or empty. See trainer.model.hf_export.
"""

from __future__ import annotations

import argparse
import json
import sys

from trainer.model import cli_guard
from trainer.training import run_lock


def main(argv=None) -> int:
    """Parses args, exports, prints {"out", "fingerprint", "files"}; exit 2 on bad input."""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.export_hf", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="model checkpoint or run directory")
    parser.add_argument("--out", required=True, help="new or empty output directory")
    parser.add_argument("--tokenizer", help="SentencePiece .model to export alongside")
    args = parser.parse_args(argv)
    from trainer.model import hf_export  # JAX and Orbax: after --help and argument errors

    try:
        run_lock.refuse_if_owned(args.checkpoint, "export it")  # Its export/ is being written.
        result = hf_export.export(args.checkpoint, args.out, args.tokenizer)
    except (hf_export.ExportError, run_lock.RunDirLockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    cli_guard.protect()
    sys.exit(main())
