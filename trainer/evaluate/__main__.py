"""`python -m trainer.evaluate ...`: see `trainer.evaluate.cli`."""

import sys

from trainer.model import cli_guard


def main(argv=None) -> int:
    """The `hd-evaluate` console script and `python -m trainer.evaluate`."""
    # Imported after cli_guard.protect() (trainer.model.cli_guard).
    from trainer.evaluate import cli

    return cli.main(argv)


if __name__ == "__main__":
    cli_guard.protect()
    sys.exit(main())
