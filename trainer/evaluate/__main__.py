"""`python -m trainer.evaluate ...`: see `trainer.evaluate.runner`."""
import sys

from trainer.evaluate import runner

if __name__ == "__main__":
    sys.exit(runner.main())
