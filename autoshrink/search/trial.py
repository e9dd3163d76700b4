"""One trial: plan -> compress the pretrained model -> brief fine-tune -> measure.

Returns validation perplexity, stored bytes, ratio, latency and timings. A trial is validated at
the rungs of successive halving (`rungs`: steps/h^k, ..., steps/h, steps); every compressed site
has settled by the first (pruning and doping ramps end there), so each rung's validation measures
the plan as stored, and trials are compared only at equal steps. At each rung before the last,
`should_stop(step, val_ppl)` may end the trial (StopTrial, carrying its curve so far); a NaN/inf
loss raises DivergedError. Neither is ever reported as a finished trial.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from autoshrink.data import LMData
from autoshrink.measure.latency import measure_latency_ms, reference_input
from autoshrink.models.progress import TrainingProgress
from autoshrink.models.training import (
    DEFAULT_LR,
    TRIAL_DISTILL_WEIGHT,
    TrainConfig,
    evaluate_perplexity,
    pick_device,
    settles_at,
    train_lm,
)
from autoshrink.plan import compress, stored_bytes


class StopTrial(Exception):
    """A weak trial stopped early at `step` with validation perplexity `val_ppl`; `curve` holds its
    validations so far (step -> val ppl), which later trials are compared against."""

    def __init__(self, step: int, val_ppl: float, reason: str, curve: dict[int, float] | None = None):
        super().__init__(reason)
        self.step, self.val_ppl, self.curve = step, val_ppl, dict(curve or {})


# A rung any earlier judges a plan before fine-tuning has repaired most of its compression damage.
MIN_RUNG_STEPS = 10


def rungs(steps: int, halving: int, evals: int = 4) -> list[int]:
    """The steps where a trial is validated: with successive halving (`halving` h >= 2) its rungs
    steps/h^k, none before MIN_RUNG_STEPS, the last being `steps`; without (h = 1), `evals`
    evenly spaced validations that only draw the trial's curve."""
    if steps <= 0:
        return []
    if halving <= 1:
        every = max(1, steps // max(1, evals))
        return sorted({*range(every, steps + 1, every), steps})
    out, r = {steps}, steps / halving
    while round(r) >= MIN_RUNG_STEPS:
        out.add(round(r))
        r /= halving
    return sorted(out)


@dataclass
class TrialSettings:
    finetune_steps: int = 80  # short: enough to rank plans, as the per-trial budget allows on a CPU
    batch_size: int = 32
    bptt: int = 35
    lr: float = DEFAULT_LR  # final training's: 2e-3 undid data-aware starts within 27 steps (results/trial_lr.md)
    halving: int = 3  # successive halving's factor: at each rung the best 1/halving go on (1: off)
    evals: int = 4  # validations during fine-tuning without halving (the trial's curve)
    eval_tokens: int | None = 12_000  # a fixed prefix of the valid split: cheap and comparable
    distill: bool = False  # soft targets from the dense model
    device: str = "auto"
    seed: int = 0


def val_slice(tokens: int | None = TrialSettings.eval_tokens) -> str:
    """The validation tokens a trial's perplexity is over, as headers and progress lines name them."""
    return "whole valid split" if tokens is None else f"first {tokens:,} valid tokens"


@dataclass
class TrialResult:
    val_ppl: float
    stored_bytes: int
    ratio: float
    latency_ms: float
    seconds: float
    finetune_seconds: float  # time in fine-tuning steps (forward, backward, update), validation excluded
    build_seconds: float  # time compressing the dense model (data-aware builds: SVDs, GPTQ, ...)
    steps: int
    curve: dict[int, float] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False)  # the fine-tuned compressed model (CPU)


def run_trial(
    dense: nn.Module,
    plan: dict,
    data: LMData,
    settings: TrialSettings,
    dense_bytes: int,
    should_stop: Callable[[int, float], str | None] | None = None,
    progress: TrainingProgress | None = None,
    stats: dict | None = None,
) -> TrialResult:
    """`progress` (models/progress.py) follows the fine-tuning: steps, loss, ETA, the last validation;
    `stats` are the sites' calibration statistics for data-aware builds."""
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    model = compress(dense, plan, freqs=data.vocab.freqs, stats=stats)
    build_s = time.perf_counter() - start
    nbytes = stored_bytes(model)
    curve: dict[int, float] = {}
    steps = settings.finetune_steps
    checks = rungs(steps, settings.halving, settings.evals)
    settle = settles_at(model)
    # Ramps end by the first rung, so every rung (halving) or validation measures the plan as stored.
    ramp = min(steps, math.floor(checks[0] / settle)) if settle > 0 and checks and settings.halving > 1 else steps
    settled = math.ceil(settle * ramp)

    def on_eval(step: int, val: float) -> None:
        if step < settled:
            return  # mid-ramp (denser than stored): not a measurement of this plan, never compared
        curve[step] = val
        if progress is not None:
            progress.note(f"val ppl {val:.2f} at step {step}")
        at_rung = step in checks and step < steps  # the untrained start (step 0) is no rung
        reason = should_stop(step, val) if should_stop is not None and at_rung else None
        if reason:
            raise StopTrial(step, val, reason, curve)

    finetune_s = 0.0
    device = pick_device(settings.device)
    if steps > 0:
        cfg = TrainConfig(
            steps=steps,
            batch_size=settings.batch_size,
            bptt=settings.bptt,
            lr=settings.lr,
            eval_at=tuple(checks),
            ramp_steps=ramp,
            eval_tokens=settings.eval_tokens,
            patience=None,
            # Only trained states are compared: a plan with a ramp (pruning, doping) cannot be
            # validated as stored before training, so an untrained validation would give the other
            # plans a different fidelity (results/trial_lr.md: at lr 2e-3 it made an untrained
            # 28x plan beat the trained 25x allocation).
            validate_start=False,
            device=settings.device,
            seed=settings.seed,
            distill_from=copy.deepcopy(dense) if settings.distill else None,
            distill_weight=TRIAL_DISTILL_WEIGHT,
            log_every=max(1, steps // 20),
        )
        result = train_lm(model, data.train, data.valid, cfg, on_eval=on_eval, on_log=progress)
        finetune_s = result.seconds - result.eval_seconds
        val = result.best_val_ppl  # the restored state's validation, on the same tokens
    else:
        val = evaluate_perplexity(model, data.valid, device=device, max_tokens=settings.eval_tokens, bptt=settings.bptt)
    model.cpu()
    latency = measure_latency_ms(model, reference_input(len(data.vocab)))
    return TrialResult(
        val_ppl=val,
        stored_bytes=nbytes,
        ratio=dense_bytes / nbytes,
        latency_ms=latency,
        seconds=time.perf_counter() - start,
        finetune_seconds=finetune_s,
        build_seconds=build_s,
        steps=steps,
        curve=curve,
        model=model,
    )
