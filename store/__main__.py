"""``python -m store {inspect,verify,stats,repair,compact} STORE [--json]`` (see store/cli.py).

The store imports nothing of the other packages, so a working-directory folder
named like one of them cannot break this command (see trainer.cli_guard).
"""

import sys

from store.cli import main

if __name__ == "__main__":
    sys.exit(main())
