from __future__ import annotations

import math

import pytest
import torch

from autoshrink.data import load_lm_data
from autoshrink.methods import CompressedWeight
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
from autoshrink.models.training import DivergedError, TrainConfig, evaluate_perplexity, train_lm
from autoshrink.plan import compress


@pytest.fixture(scope="module")
def data(text_file):
    return load_lm_data(str(text_file))


def _model(vocab_size):
    torch.manual_seed(0)
    return LSTMLM(LSTMLMConfig(vocab_size, 16, 16, 2, 0.0))


def test_training_lowers_validation_perplexity_and_keeps_the_best(data):
    model = _model(len(data.vocab))
    before = evaluate_perplexity(model, data.valid)
    result = train_lm(model, data.train, data.valid, TrainConfig(steps=120, batch_size=8, bptt=10, lr=2e-2, eval_every=30))
    after = evaluate_perplexity(model, data.valid)
    assert after < before / 2
    assert after == pytest.approx(result.best_val_ppl, rel=1e-5)
    assert [h["step"] for h in result.history] == [30, 60, 90, 120]


def test_best_state_is_never_taken_mid_ramp(data):
    """A pruned model restored from a validation before its ramp ended would be denser than stored."""
    model = compress(_model(len(data.vocab)), {"decoder": {"method": "prune", "density": 0.1}})
    result = train_lm(model, data.train, data.valid, TrainConfig(steps=40, batch_size=8, bptt=10, lr=1e-2, eval_every=5))
    pruned = next(m for m in model.modules() if isinstance(m, CompressedWeight))
    assert int(pruned.mask.count_nonzero()) == pruned.k
    settled = [h for h in result.history if h["step"] / 40 >= 0.75]
    assert result.best_val_ppl == min(h["val_ppl"] for h in settled)
    assert evaluate_perplexity(model, data.valid) == pytest.approx(result.best_val_ppl, rel=1e-5)


def test_divergence_is_reported_not_hidden(data):
    model = _model(len(data.vocab))
    with torch.no_grad():
        model.decoder.weight.fill_(math.nan)
    with pytest.raises(DivergedError, match="nan"):
        train_lm(model, data.train, data.valid, TrainConfig(steps=3, batch_size=8, bptt=10))


def test_distillation_from_the_dense_teacher_runs(data):
    teacher = _model(len(data.vocab))
    student = compress(teacher, {"decoder": {"method": "lowrank", "rank": 2}})
    before = evaluate_perplexity(student, data.valid)
    train_lm(student, data.train, data.valid, TrainConfig(steps=20, batch_size=8, bptt=10, lr=1e-2, distill_from=teacher))
    assert evaluate_perplexity(student, data.valid) < before
