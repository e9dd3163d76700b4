"""What every benchmark report shares: the commit it measured, and writing the markdown."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from autoshrink.provenance import source_commit


def plan_digest(plan: dict) -> str:
    """8 hex digits naming a plan: a kept training is read back only for the plan it trained."""
    return hashlib.sha1(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:8]


def commit() -> str:
    """The commit of the code measured (provenance.source_commit), "?" outside a checkout."""
    return source_commit() or "?"


def write_report(path: str | Path, markdown: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    print(markdown)
