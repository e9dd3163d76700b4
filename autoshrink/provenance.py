"""Which code made a result: the git commit of autoshrink's own source, when it runs from a checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path


def source_commit() -> str | None:
    """The short commit of the checkout autoshrink was imported from, with "+dirty" when tracked
    files differed from it; None when it is not a git checkout (an installed wheel) or git is
    missing. Read when this module is first imported: a long run records the code it started
    with, not a commit made in its checkout while it ran."""
    return _AT_IMPORT


def _read_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


_AT_IMPORT = _read_commit()
