"""`python -m trainer.rounds ...` (`hd-rounds`): see `trainer.rounds.driver`."""

import sys

from trainer.model import cli_guard


def main(argv=None) -> int:
    """The `hd-rounds` console script and `python -m trainer.rounds`."""
    # Imported after cli_guard.protect() (trainer.model.cli_guard).
    from trainer.rounds import driver

    return driver.main(argv)


if __name__ == "__main__":
    cli_guard.protect()
    sys.exit(main())
