"""Tiny LSTM LMs and token streams for the allocate tests (built in the test, in about a second)."""

from __future__ import annotations

import functools
import random

import torch
import torch.nn.functional as F

from autoshrink.data import batchify, bptt_windows
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig

VOCAB = 40


def tiny_lstm(seed: int = 0, vocab: int = VOCAB) -> LSTMLM:
    """A random LSTM LM with weights large enough that compressing any site changes its loss."""
    torch.manual_seed(seed)
    model = LSTMLM(LSTMLMConfig(vocab_size=vocab, emb_dim=12, hidden=12, layers=2, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.6, 0.6)
    return model.eval()


def tiny_ids(n: int = 600, vocab: int = VOCAB, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def structured_ids(n: int = 3000, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    """A stream with structure to learn: each token mostly follows from the one before."""
    rng = random.Random(seed)
    successor = list(range(vocab))
    rng.shuffle(successor)
    ids = [0]
    for _ in range(n - 1):
        ids.append(rng.randrange(vocab) if rng.random() < 0.2 else successor[ids[-1]])
    return torch.tensor(ids)


@functools.lru_cache(maxsize=None)
def trained_lstm(steps: int = 100, seed: int = 0) -> tuple[LSTMLM, torch.Tensor, torch.Tensor]:
    """(model, train ids, valid ids): a tiny LM trained until compressing it costs loss. Cached:
    callers must not change the model."""
    torch.manual_seed(seed)
    model = LSTMLM(LSTMLMConfig(vocab_size=VOCAB, emb_dim=16, hidden=16, layers=2, dropout=0.0))
    train, valid = structured_ids(3000, seed=seed), structured_ids(800, seed=seed)[-600:]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    windows = list(bptt_windows(batchify(train, 10), 20))
    model.train()
    for step in range(steps):
        x, y = windows[step % len(windows)]
        logits, _ = model(x)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), train, valid
