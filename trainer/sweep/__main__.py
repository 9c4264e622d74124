"""``python -m trainer.sweep`` (see the package docstring)."""

import sys

from trainer.sweep import main

if __name__ == "__main__":
    sys.exit(main())
