"""A Hugging Face tokenizer as the vocabulary of a corpus: token ids per split and their frequencies.

The word-level models read lower-cased word tokens (vocab.py); a Hugging Face causal LM reads the
raw text of the same corpora through its own tokenizer. Each non-blank line is encoded without
special tokens and followed by the tokenizer's end-of-sequence token when it has one (the <eos>
of the word-level corpora), and the lines of a split are concatenated into one id stream, which
the usual BPTT batching cuts into windows.

Ids stay in the tokenizer's order (the model's embedding rows are in that order): `freqs` are the
train-split counts per id, and methods that want frequency order (GroupReduce, hash, LightRNN)
sort by them themselves, storing the permutation where one is needed.

Encoded splits are cached under the model/data cache (`$AUTOSHRINK_CACHE`, else
~/.cache/autoshrink), keyed by the tokenizer's files and the corpus text, so a search, its final
training and `eval` tokenise a corpus once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autoshrink.data.corpus import SPLITS, RawCorpus


@dataclass(frozen=True)
class SubwordVocab:
    """The model's tokenizer, the model's vocabulary size (embedding rows, which may exceed the
    tokenizer's own length) and, once a corpus is encoded, the train counts of every id."""

    tokenizer: Any = field(repr=False)
    size: int
    fingerprint: str = ""  # a hash of the tokenizer's files: the cache key
    counts: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.size

    def __deepcopy__(self, memo) -> "SubwordVocab":
        return self  # immutable: every copy of a model (one per trial) shares the tokenizer

    @property
    def freqs(self) -> torch.Tensor | None:
        """Train count of each id as floats, or None before a corpus is encoded."""
        return None if self.counts is None else self.counts.float()

    def encode_lines(self, lines: list[str]) -> torch.Tensor:
        """One id stream: every line's tokens, each line closed by the tokenizer's eos token."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        tail = [eos] if isinstance(eos, int) else []
        ids: list[int] = []
        for start in range(0, len(lines), 1024):  # batched: the fast tokenizers encode in parallel
            for row in self.tokenizer(lines[start : start + 1024], add_special_tokens=False)["input_ids"]:
                ids.extend(row)
                ids.extend(tail)
        return torch.tensor(ids, dtype=torch.long)

    def with_counts(self, train: torch.Tensor) -> "SubwordVocab":
        counts = torch.bincount(train, minlength=self.size)[: self.size]
        return SubwordVocab(self.tokenizer, self.size, self.fingerprint, counts)


def _corpus_hash(raw: RawCorpus) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(split.encode())
        for line in raw.split(split):
            h.update(line.encode("utf-8", "replace") + b"\n")
    return h.hexdigest()[:20]


def encode_corpus(raw: RawCorpus, vocab: SubwordVocab, cache: Path | None = None) -> dict[str, torch.Tensor]:
    """{split: 1-D ids} of a raw corpus, from the cache when the same tokenizer encoded the same text."""
    path = None
    if cache is not None and vocab.fingerprint:
        path = cache / "tokenized" / f"{vocab.fingerprint}-{_corpus_hash(raw)}.safetensors"
        if path.is_file():
            try:
                stored = load_file(str(path))
                if set(stored) == set(SPLITS):
                    return stored
            except (SafetensorError, OSError):
                pass  # a broken cache entry is rebuilt below
    splits = {s: vocab.encode_lines(raw.split(s)) for s in SPLITS}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file(splits, str(tmp), metadata={"tokenizer": vocab.fingerprint})
        tmp.replace(path)
    return splits


def tokenizer_fingerprint(folder: Path) -> str:
    """A hash of the tokenizer's files in a model folder (what decides its ids)."""
    h = hashlib.sha256()
    for name in sorted(TOKENIZER_FILES):
        f = folder / name
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:20]


# The files a saved tokenizer consists of (save_pretrained writes some of them).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)
