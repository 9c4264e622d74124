"""The working directory must not hide our packages from `python -m ...`.

`python -m trainer ...` puts the working directory first on `sys.path`. A
user directory there named like one of our top-level packages (`./store`
holding a store is the natural case) is then found before ours whenever ours
are reached through an import hook (an editable install) rather than a
`sys.path` entry, and an import deep inside the command fails with "cannot
import name 'StoreReader' from 'store' (unknown location)". The installed
console scripts (`hd-train`, `hd-dump`, ...; setup.cfg) never put the working
directory on the path, so they cannot be hit.

`protect()` runs first in every `python -m` entry point: it drops the
working directory from `sys.path` when it holds such a directory and says so
in one line. Standard library only: it runs before anything of ours that a
shadowing directory could hide. It lives in `trainer.model`, the lowest unit
every entry point may import (docs/INTERFACES.md).
"""

from __future__ import annotations

import os
import sys

# Our top-level packages (setup.cfg [options.packages.find]).
PACKAGES = ("store", "trainer", "teacher_dump", "pipelines")
# Where our packages live: the directory that holds `trainer/`.
_OURS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))


def shadowing_dirs(cwd: str | None = None) -> list[str]:
    """Names of the directories in `cwd` that are named like our packages but are not ours.

    Args:
        cwd: the directory to check; None: the current directory.
    """
    cwd = os.path.realpath(cwd or os.getcwd())
    if cwd == _OURS:  # Run from the checkout: those directories are ours.
        return []
    return [name for name in PACKAGES if os.path.isdir(os.path.join(cwd, name))]


def protect(stream=None) -> list[str]:
    """Drops the working directory from sys.path if it would shadow our packages.

    Only the entries `python -m` adds (the working directory, as a path or
    "") are removed, and only when a shadowing directory is there.

    Args:
        stream: where the one-line note goes (stderr by default).

    Returns:
        The shadowing directory names found (empty: nothing changed).
    """
    names = shadowing_dirs()
    if not names:
        return []
    cwd = os.path.realpath(os.getcwd())
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != cwd]
    listed = ", ".join(f"./{n}" for n in names)
    print(
        f"note: {listed} in the working directory would hide this project's package"
        f"{'s' if len(names) > 1 else ''} of that name under `python -m`; the working "
        "directory is left off the import path (the installed commands, e.g. `hd-train`, "
        "never look there)",
        file=stream or sys.stderr,
    )
    return names
