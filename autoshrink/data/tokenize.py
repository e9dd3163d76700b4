"""Word tokenisation of docs/benchmark.md: lower-cased words ([a-z']+) and each punctuation mark.

Tags such as `<unk>` (PTB layout) stay one token; digits group into one token.
"""

from __future__ import annotations

import re

EOS = "<eos>"
UNK = "<unk>"
_TOKEN = re.compile(r"<[a-z]+>|[a-z']+|[0-9]+|\S")


def tokenize(line: str) -> list[str]:
    """Tokens of one line (a verse, a sentence), without the end-of-line token."""
    return _TOKEN.findall(line.lower())
