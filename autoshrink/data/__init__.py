"""Data: corpora (kjv, PTB-layout folder, text file), word vocabulary with frequencies, batching."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from autoshrink.data.batching import batchify, bptt_windows, num_windows
from autoshrink.data.corpus import TextCorpus, corpus_key, load_corpus
from autoshrink.data.tokenize import EOS, UNK, tokenize
from autoshrink.data.vocab import Vocab


@dataclass(frozen=True)
class LMData:
    """A corpus encoded with a vocabulary: 1-D id streams per split."""

    name: str
    vocab: Vocab
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    def split(self, name: str) -> torch.Tensor:
        return getattr(self, name)


def load_lm_data(name_or_path: str, vocab: Vocab | None = None, max_words: int = 10_000) -> LMData:
    """Encode a corpus; the vocabulary is built from its train split unless one is given."""
    corpus = load_corpus(name_or_path)
    vocab = vocab or Vocab.build(corpus.train, max_words=max_words)
    return LMData(corpus_key(name_or_path), vocab, vocab.encode(corpus.train), vocab.encode(corpus.valid),
                  vocab.encode(corpus.test))


__all__ = ["EOS", "UNK", "LMData", "TextCorpus", "Vocab", "batchify", "bptt_windows", "corpus_key",
           "load_corpus", "load_lm_data", "num_windows", "tokenize"]
