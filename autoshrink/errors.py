"""The one exception type for user mistakes.

The CLI turns a UserError into one line on stderr and exit status 2; anything else is a bug and
keeps its traceback. Messages show the bad value, as torchao's config checks do. Files a user
gives are read through `read_user_text` / `read_user_json`, so a missing, unreadable or garbage
file is such a line too, never a UnicodeDecodeError.
"""

from __future__ import annotations

import json
import os
from typing import Any


class UserError(ValueError):
    """Bad input from the user: a malformed budget, knob, path, corpus or space."""


def read_user_text(path: "str | os.PathLike", what: str = "file") -> str:
    """The UTF-8 text of a file the user gave, or one UserError that names it: missing,
    unreadable, or not text at all (garbage bytes)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"no {what} {path}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except OSError as e:
        raise UserError(f"{what} {path} cannot be read: {e.strerror or e}") from None


def read_user_json(path: "str | os.PathLike", what: str = "file") -> Any:
    """The JSON of a file the user gave (see read_user_text), or one UserError that names it."""
    text = read_user_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is corrupt (not JSON: {e})") from None
