"""`python -m trainer.evaluate ...`: see `trainer.evaluate.runner`."""
import sys

from trainer import cli_guard


def main(argv=None) -> int:
    """The `hd-evaluate` console script and `python -m trainer.evaluate`."""
    from trainer.evaluate import runner  # after cli_guard.protect(): see trainer.cli_guard
    return runner.main(argv)


if __name__ == "__main__":
    cli_guard.protect()
    sys.exit(main())
