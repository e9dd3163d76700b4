"""Data: corpora (kjv, PTB-layout folder, text file), word vocabulary with frequencies, a Hugging
Face tokenizer as vocabulary (subword.py), batching."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autoshrink.data.batching import batchify, bptt_windows, num_windows
from autoshrink.data.cache import cache_root
from autoshrink.data.corpus import RawCorpus, TextCorpus, corpus_key, load_corpus, load_corpus_text
from autoshrink.data.subword import SubwordVocab, encode_corpus
from autoshrink.data.tokenize import EOS, UNK, tokenize
from autoshrink.data.vocab import Vocab


@dataclass(frozen=True)
class LMData:
    """A corpus encoded with a vocabulary: 1-D id streams per split."""

    name: str
    vocab: Vocab | SubwordVocab
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor

    def split(self, name: str) -> torch.Tensor:
        return getattr(self, name)


def load_lm_data(name_or_path: str, vocab: Vocab | SubwordVocab | None = None, max_words: int = 10_000) -> LMData:
    """Encode a corpus; the vocabulary is built from its train split unless one is given. With a
    Hugging Face tokenizer (SubwordVocab) the raw text is tokenised and the returned vocabulary
    carries the train split's token counts."""
    if isinstance(vocab, SubwordVocab):
        ids = encode_corpus(load_corpus_text(name_or_path), vocab, cache_root())
        return LMData(
            corpus_key(name_or_path), vocab.with_counts(ids["train"]), ids["train"], ids["valid"], ids["test"]
        )
    corpus = load_corpus(name_or_path)
    vocab = vocab or Vocab.build(corpus.train, max_words=max_words)
    return LMData(
        corpus_key(name_or_path),
        vocab,
        vocab.encode(corpus.train),
        vocab.encode(corpus.valid),
        vocab.encode(corpus.test),
    )


__all__ = [
    "EOS",
    "UNK",
    "LMData",
    "RawCorpus",
    "SubwordVocab",
    "TextCorpus",
    "Vocab",
    "batchify",
    "bptt_windows",
    "corpus_key",
    "load_corpus",
    "load_corpus_text",
    "load_lm_data",
    "num_windows",
    "tokenize",
]
