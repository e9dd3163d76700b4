"""The model/data cache of docs/design.md (Run folder): `$AUTOSHRINK_CACHE`, else ~/.cache/autoshrink."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("AUTOSHRINK_CACHE", Path.home() / ".cache" / "autoshrink")).expanduser()
