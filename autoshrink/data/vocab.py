"""Word vocabulary with training frequencies (the vocabulary methods need them)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable

import torch

from autoshrink.data.tokenize import EOS, UNK


@dataclass(frozen=True)
class Vocab:
    """Words in id order and their training counts.

    Ids are in descending frequency order (the specials included, by their own counts), so
    a frequency-sorted block of ids is a contiguous range: GroupReduce's blocks need no map.
    """

    words: tuple[str, ...]
    counts: tuple[int, ...]

    @classmethod
    def build(cls, lines: Iterable[list[str]], max_words: int = 10_000) -> "Vocab":
        """The `max_words` most frequent words of `lines` (token lists with <eos>), plus <unk>/<eos>."""
        counter = Counter(tok for line in lines for tok in line)
        eos = counter.pop(EOS, 0)
        counter.pop(UNK, 0)
        kept = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]
        unk = sum(counter.values()) - sum(c for _, c in kept)
        entries = kept + [(EOS, eos), (UNK, unk)]
        entries.sort(key=lambda kv: (-kv[1], kv[0]))
        return cls(words=tuple(w for w, _ in entries), counts=tuple(c for _, c in entries))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @property
    def freqs(self) -> torch.Tensor:
        """Training count of each id, as floats (GroupReduce weights, hash/LightRNN ordering)."""
        return torch.tensor(self.counts, dtype=torch.float32)

    def encode(self, lines: Iterable[list[str]]) -> torch.Tensor:
        index = self.index
        unk = index[UNK]
        return torch.tensor([index.get(tok, unk) for line in lines for tok in line], dtype=torch.long)

    def to_json(self) -> dict:
        return {"words": list(self.words), "counts": list(self.counts)}

    @classmethod
    def from_json(cls, d: dict) -> "Vocab":
        return cls(words=tuple(d["words"]), counts=tuple(int(c) for c in d["counts"]))
