"""What every benchmark report shares: the commit it measured, and writing the markdown."""

from __future__ import annotations

from pathlib import Path

from autoshrink.provenance import source_commit


def commit() -> str:
    """The commit of the code measured (provenance.source_commit), "?" outside a checkout."""
    return source_commit() or "?"


def write_report(path: str | Path, markdown: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    print(markdown)
