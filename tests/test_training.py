from __future__ import annotations

import math

import pytest
import torch

from autoshrink.data import batchify, load_lm_data, num_windows
from autoshrink.errors import UserError
from autoshrink.methods import CompressedWeight
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
from autoshrink.models.distill import Teacher, kl_per_token
from autoshrink.models.schedule import cosine_factor
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
    result = train_lm(
        model, data.train, data.valid, TrainConfig(steps=120, batch_size=8, bptt=10, lr=2e-2, eval_every=30)
    )
    after = evaluate_perplexity(model, data.valid)
    assert after < before / 2
    assert after == pytest.approx(result.best_val_ppl, rel=1e-5)
    assert [h["step"] for h in result.history] == [0, 30, 60, 90, 120]  # 0: the starting weights
    assert result.history[0]["val_ppl"] == pytest.approx(before, rel=1e-5)


def test_best_state_is_never_taken_mid_ramp(data):
    """A pruned model restored from a validation before its ramp ended would be denser than stored."""
    model = compress(_model(len(data.vocab)), {"decoder": {"method": "prune", "density": 0.1}})
    result = train_lm(
        model, data.train, data.valid, TrainConfig(steps=40, batch_size=8, bptt=10, lr=1e-2, eval_every=5)
    )
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


def _converged(data):
    """A tiny model trained until validation stops improving (the plateau recipe of pretraining)."""
    model = _model(len(data.vocab))
    train_lm(
        model,
        data.train,
        data.valid,
        TrainConfig(
            epochs=40,
            batch_size=8,
            bptt=10,
            lr=1e-2,
            eval_every=40,
            schedule="plateau",
            patience=3,
            validate_start=False,
        ),
    )
    return model


def test_default_recipe_does_not_damage_a_converged_model(data):
    model = _converged(data)
    before = evaluate_perplexity(model, data.valid)
    result = train_lm(model, data.train, data.valid, TrainConfig(steps=120, batch_size=8, bptt=10, eval_every=20))
    assert evaluate_perplexity(model, data.valid) <= before * (1 + 1e-6)
    assert result.history[0] == {"step": 0, "val_ppl": pytest.approx(before, rel=1e-6), "lr": 0.0}


def test_a_run_that_only_hurts_gives_back_the_starting_weights(data):
    """lr 1.0 wrecks a converged model: the best validated state is then the one it started from."""
    model = _converged(data)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    before = evaluate_perplexity(model, data.valid)
    result = train_lm(
        model,
        data.train,
        data.valid,
        TrainConfig(steps=30, batch_size=8, bptt=10, lr=1.0, clip=100.0, eval_every=10, patience=None),
    )
    assert max(h["val_ppl"] for h in result.history[1:]) > before  # training did hurt
    assert result.best_step == 0
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())


def test_warmup_then_cosine_decay_to_the_step_cap(data):
    assert [cosine_factor(s, 40, 0.25) for s in (1, 5, 10)] == [0.1, 0.5, 1.0]  # 10 warm-up steps
    factors = [cosine_factor(s, 40, 0.25) for s in range(10, 41)]
    assert all(a > b for a, b in zip(factors, factors[1:])) and factors[-1] == pytest.approx(0.0, abs=1e-12)
    model = _model(len(data.vocab))
    result = train_lm(
        model,
        data.train,
        data.valid,
        TrainConfig(steps=40, batch_size=8, bptt=10, lr=1e-2, warmup=0.25, eval_every=10, patience=None),
    )
    assert [h["lr"] for h in result.history] == pytest.approx(
        [1e-2 * f for f in (0, 1.0, cosine_factor(20, 40, 0.25), cosine_factor(30, 40, 0.25), 0.0)], abs=1e-12
    )


def test_a_resumed_run_continues_the_schedule(data):
    result = train_lm(
        _model(len(data.vocab)),
        data.train,
        data.valid,
        TrainConfig(
            steps=40,
            schedule_from=30,
            batch_size=8,
            bptt=10,
            lr=1e-2,
            eval_every=5,
            patience=None,
            validate_start=False,
        ),
    )
    assert result.steps == 10
    assert [h["step"] for h in result.history] == [35, 40]
    assert result.history[0]["lr"] == pytest.approx(1e-2 * cosine_factor(35, 40, 0.05))


def test_stops_after_patience_validations_without_improvement(data):
    result = train_lm(
        _model(len(data.vocab)),
        data.train,
        data.valid,
        TrainConfig(steps=1000, batch_size=8, bptt=10, lr=0.0, eval_every=5, patience=2, cooldown=0.0),
    )
    assert result.stopped == "plateau" and result.steps == 10
    assert result.best_step == 0


UNBEATABLE = ((0, 1e-9),)  # a bar no validation beats: every one counts toward the patience


def test_a_cosine_run_cools_down_to_zero_before_it_stops(data):
    """Patience used up at step 20 of 100: the lr decays from its cosine value there to zero over
    20 steps (cooldown 0.2 of the horizon), and the run stops at step 40 after a closing validation."""
    result = train_lm(
        _model(len(data.vocab)),
        data.train,
        data.valid,
        TrainConfig(
            steps=100, batch_size=8, bptt=10, lr=1e-2, warmup=0.0, eval_every=10, patience=2,
            validate_start=False, prior_history=UNBEATABLE,
        ),
    )  # fmt: skip
    at_20 = cosine_factor(20, 100, 0.0)
    assert result.stopped == "plateau" and result.steps == 40 and result.cooldown_from == 20
    assert [h["step"] for h in result.history] == [10, 20, 30, 40]
    assert result.history[1]["lr"] == pytest.approx(1e-2 * at_20)
    assert result.history[2]["lr"] == pytest.approx(1e-2 * at_20 * 0.5)  # halfway down the half cosine
    assert result.history[3]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_a_run_resumed_in_its_cooldown_finishes_it_where_it_began(data):
    result = train_lm(
        _model(len(data.vocab)),
        data.train,
        data.valid,
        TrainConfig(
            steps=100, schedule_from=30, batch_size=8, bptt=10, lr=1e-2, warmup=0.0, eval_every=5, patience=2,
            validate_start=False, prior_history=(*UNBEATABLE, (10, 2.0), (20, 3.0), (30, 4.0)),
        ),
    )  # fmt: skip
    assert result.stopped == "plateau" and result.steps == 10  # 30 -> 40: the cooldown began at 20
    assert result.cooldown_from == 20
    assert [h["step"] for h in result.history] == [35, 40]
    three_quarters_down = 0.5 * (1 + math.cos(math.pi * 15 / 20))
    assert result.history[0]["lr"] == pytest.approx(1e-2 * cosine_factor(20, 100, 0.0) * three_quarters_down)


def test_the_cooldown_began_at_the_validation_that_used_up_the_patience():
    from autoshrink.models.training import prior_stopping

    history = [(0, 40.0), (100, 39.0), (200, 39.5), (300, 38.0), (400, 38.5), (500, 38.6), (600, 37.0)]
    assert prior_stopping(history, 2).cooldown_from == 500
    assert prior_stopping(history, 3).cooldown_from is None and prior_stopping(history).cooldown_from is None


def test_a_resumed_run_stops_on_the_patience_its_earlier_validations_used_up(data):
    """A run resumed after two validations without improvement (patience 3) stops at its next one,
    and keeps the earlier best as the bar: a fresh count would train three more validations."""
    prior = ((0, 1.0), (5, 2.0), (10, 3.0))  # the best (1.0) was the start; two bad since
    result = train_lm(
        _model(len(data.vocab)),
        data.train,
        data.valid,
        TrainConfig(
            steps=1000,
            schedule_from=10,
            batch_size=8,
            bptt=10,
            lr=0.0,
            eval_every=5,
            patience=3,
            cooldown=0.0,
            validate_start=False,
            prior_history=prior,
        ),
    )
    assert result.stopped == "plateau" and result.steps == 5
    assert result.best_val_ppl == 1.0 and result.best_step is None  # nothing of this call beat the bar


def test_prior_stopping_counts_from_the_best_and_every_cut():
    from autoshrink.models.training import prior_stopping

    assert prior_stopping([(0, 40.0), (100, 39.0), (200, 39.5), (300, 39.2), (400, 38.0), (500, 38.5)])[:3] == (
        38.0,
        1,
        3,
    )
    assert prior_stopping([]) == (math.inf, 0, 0, None)


def test_the_plateau_schedule_resumes_at_the_lr_its_cuts_left(data):
    result = train_lm(
        _model(len(data.vocab)),
        data.train,
        data.valid,
        TrainConfig(
            steps=20,
            schedule_from=10,
            batch_size=8,
            bptt=10,
            lr=1e-2,
            schedule="plateau",
            eval_every=5,
            patience=None,
            validate_start=False,
            prior_history=((0, 1.0), (5, 2.0), (10, 3.0)),
        ),
    )
    assert result.history[0]["lr"] == pytest.approx(1e-2 / 16)  # two cuts before the resume


def test_epochs_cap_the_schedule(data):
    per_epoch = num_windows(batchify(data.train, 8), 10)
    result = train_lm(
        _model(len(data.vocab)),
        data.train,
        data.valid,
        TrainConfig(epochs=0.5, steps=10_000, batch_size=8, bptt=10, patience=None),
    )
    assert result.steps == round(0.5 * per_epoch)


def test_time_caps_the_run_and_its_end_is_validated(data):
    import time

    started = time.perf_counter()
    result = train_lm(
        _model(len(data.vocab)),
        data.train,
        data.valid,
        TrainConfig(steps=10**6, time=1.0, batch_size=8, bptt=10, lr=1e-2, eval_every=10**5),
    )
    assert time.perf_counter() - started < 5
    assert result.stopped == "time" and 0 < result.steps < 10**6
    assert result.history[-1]["step"] == result.steps  # the last steps were judged, not thrown away


def test_unknown_schedule_is_a_user_error(data):
    with pytest.raises(UserError, match="'linear'"):
        train_lm(_model(len(data.vocab)), data.train, data.valid, TrainConfig(steps=2, schedule="linear"))


# --- distillation -------------------------------------------------------------------------------
def _biased_teacher(data, token: int):
    """A teacher that puts most of its mass on one word, whatever the data says."""
    teacher = _model(len(data.vocab))
    with torch.no_grad():
        teacher.decoder.bias[token] += 20.0
    return teacher


def _mean_prob(model, ids, token: int) -> float:
    model.eval()
    with torch.no_grad():
        logits, _ = model(batchify(ids, 8)[:50])
    return float(torch.softmax(logits, -1)[..., token].mean())


@pytest.mark.parametrize("weight", [0.5, 0.0])
def test_distillation_pulls_the_student_toward_the_teacher(data, weight):
    """Fails if distillation is switched off: only the teacher favours `token`, the data does not."""
    token = data.vocab.index["<unk>"]  # every word of the tiny corpus is in its vocabulary
    teacher = _biased_teacher(data, token)
    student = compress(_model(len(data.vocab)), {"decoder": {"method": "lowrank", "rank": 4}})
    train_lm(
        student,
        data.train,
        data.valid,
        TrainConfig(
            steps=40,
            batch_size=8,
            bptt=10,
            lr=1e-2,
            distill_from=teacher,
            distill_weight=weight,
            patience=None,
            validate_start=False,
        ),
    )
    if weight:
        assert _mean_prob(student, data.valid, token) > 0.2
    else:  # the control: without the teacher the student learns the data, which never has `token`
        assert _mean_prob(student, data.valid, token) < 0.05


def test_the_teacher_carries_its_state_across_windows(data):
    model = _model(len(data.vocab)).eval()
    x = batchify(data.train, 4)[:20]
    teacher = Teacher(model, torch.device("cpu"))
    split = torch.cat([teacher.logits(x[:10]), teacher.logits(x[10:])])
    with torch.no_grad():
        whole, _ = model(x)
    assert torch.allclose(split, whole, atol=1e-5)


def test_kl_is_per_token_and_zero_against_itself():
    torch.manual_seed(0)
    a, b = torch.randn(7, 3, 11), torch.randn(7, 3, 11)
    manual = (torch.softmax(b, -1) * (torch.log_softmax(b, -1) - torch.log_softmax(a, -1))).sum(-1).mean()
    assert kl_per_token(a, b) == pytest.approx(float(manual), rel=1e-5)
    assert kl_per_token(a, a) == pytest.approx(0.0, abs=1e-6)


def test_validations_at_given_steps_and_ramps_over_given_steps(data):
    """eval_at picks the validation steps; ramp_steps ends a pruning ramp early (successive halving's first rung)."""
    model = compress(_model(len(data.vocab)), {"rnn.0.hh": {"method": "prune", "density": 0.25, "init": "plain"}})
    pruned = next(m for m in model.modules() if isinstance(m, CompressedWeight))
    kept = []
    cfg = TrainConfig(
        steps=20, batch_size=8, bptt=10, eval_at=(4, 7), ramp_steps=6, patience=None, validate_start=False
    )
    result = train_lm(model, data.train, data.valid, cfg, on_eval=lambda step, val: kept.append(int(pruned.mask.sum())))
    assert [h["step"] for h in result.history] == [4, 7, 20]
    assert kept[0] > pruned.k  # step 4 of a 6-step ramp: still denser than stored
    assert kept[1] == kept[2] == pruned.k  # the ramp ended at step 6
