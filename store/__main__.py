"""``python -m store {inspect,verify,stats} STORE [--json]`` (see store/cli.py)."""
import sys

from store.cli import main

if __name__ == "__main__":
    sys.exit(main())
