"""The one exception type for user mistakes.

The CLI turns a UserError into one line on stderr and exit status 2; anything else is a bug and
keeps its traceback. Messages show the bad value, as torchao's config checks do.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a malformed budget, knob, path, corpus or space."""
