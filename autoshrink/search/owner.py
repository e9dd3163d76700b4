"""Which search owns a RUNNING trial, and whether that search is known to be gone.

Every trial records its owner when it starts (search/study.py `claim`): host, process id, the
process's start time (so a reused pid is told apart) and a token of the search inside that
process. A resumed search fails and retries at once the trials whose owner is gone (the process
is dead, or it is this very process and that search has ended), without waiting for Optuna's
heartbeat grace period. An owner on another host cannot be checked from here: its trials are
left to the heartbeat.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path
from typing import Iterator

_ACTIVE: set[str] = set()  # tokens of the searches running in this process


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks after boot) from /proc, or None where there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    return fields[0], int(fields[19])


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: it runs
    stat = _stat(pid)
    return stat is None or stat[0] not in ("Z", "X")  # a zombie has ended


def new_owner() -> dict:
    """The record of a new search in this process (not yet active: see `active`)."""
    stat = _stat(os.getpid())
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": stat[1] if stat else None,
        "search": uuid.uuid4().hex,
    }


@contextlib.contextmanager
def active(owner: dict) -> Iterator[None]:
    """Mark the search `owner` as running in this process for the duration of the block."""
    _ACTIVE.add(owner["search"])
    try:
        yield
    finally:
        _ACTIVE.discard(owner["search"])


def gone(owner: dict | None) -> bool:
    """True when the search that owned a trial has certainly ended; False when it runs or
    cannot be checked (no record, or another host)."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    pid = int(owner["pid"])
    if pid == os.getpid():
        return owner.get("search") not in _ACTIVE
    if not _running(pid):
        return True
    stat = _stat(pid)
    return owner.get("started") is not None and stat is not None and stat[1] != owner["started"]  # pid reused


def describe(owner: dict) -> str:
    return f"process {owner.get('pid')} on {owner.get('host')}"
