"""`python -m teacher_dump.convert ...`: see `trainer.model.hf_import`."""

import sys


def main(argv=None) -> int:
    """The `hd-convert` console script and `python -m teacher_dump.convert`."""
    # Imported after cli_guard.protect() (trainer.model.cli_guard).
    from trainer.model import hf_import

    return hf_import.main(argv)


if __name__ == "__main__":
    try:
        from trainer.model import cli_guard
    except ImportError:  # ./trainer in the working directory hides ours (trainer.model.cli_guard)
        sys.exit(
            "error: ./trainer in the working directory hides this project's `trainer` "
            "package under `python -m`; run the installed `hd-convert` command or run "
            "from another directory"
        )
    cli_guard.protect()
    sys.exit(main())
