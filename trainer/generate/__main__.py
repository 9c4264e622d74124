"""`python -m trainer.generate ...`: see `trainer.generate.runner`."""

import sys

from trainer.model import cli_guard


def main(argv=None) -> int:
    """The `hd-generate` console script and `python -m trainer.generate`."""
    # Imported after cli_guard.protect() (trainer.model.cli_guard).
    from trainer.generate import runner

    return runner.main(argv)


if __name__ == "__main__":
    cli_guard.protect()
    sys.exit(main())
