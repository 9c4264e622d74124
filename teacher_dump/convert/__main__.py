"""`python -m teacher_dump.convert ...`: see `trainer.model.hf_import`."""
import sys

from trainer.model import hf_import

if __name__ == "__main__":
    sys.exit(hf_import.main())
