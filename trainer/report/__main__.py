"""``python -m trainer.report`` (see the package docstring)."""

import sys

from trainer.report import main

if __name__ == "__main__":
    sys.exit(main())
