"""One trial: plan -> compress the pretrained model -> brief fine-tune -> measure.

Returns validation perplexity, stored bytes, ratio, latency and timings. Validation during
fine-tuning, once every compressed site has settled (no mid-ramp pruning or doping density), goes
to the trial's curve and to `should_stop(step, val_ppl)`, which may end a weak trial early (StopTrial);
a NaN/inf loss raises DivergedError. Neither is ever reported as a finished trial.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from autoshrink.data import LMData
from autoshrink.measure.latency import measure_latency_ms, reference_input
from autoshrink.models.progress import TrainingProgress
from autoshrink.models.training import TrainConfig, evaluate_perplexity, pick_device, settles_at, train_lm
from autoshrink.plan import compress, stored_bytes


class StopTrial(Exception):
    """A weak trial stopped early at `step` with validation perplexity `val_ppl`."""

    def __init__(self, step: int, val_ppl: float, reason: str):
        super().__init__(reason)
        self.step, self.val_ppl = step, val_ppl


@dataclass
class TrialSettings:
    finetune_steps: int = 80  # short: enough to rank plans, as the per-trial budget allows on a CPU
    batch_size: int = 32
    bptt: int = 35
    lr: float = 2e-3
    evals: int = 4  # validations during fine-tuning (the early-stopping points)
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
    nbytes = stored_bytes(model)
    curve: dict[int, float] = {}
    settle = settles_at(model)

    def on_eval(step: int, val: float) -> None:
        if step < settle * settings.finetune_steps:
            return  # mid-ramp (denser than stored): not a measurement of this plan, never compared
        curve[step] = val
        if progress is not None:
            progress.note(f"val ppl {val:.2f} at step {step}")
        reason = should_stop(step, val) if should_stop is not None and step < settings.finetune_steps else None
        if reason:
            raise StopTrial(step, val, reason)

    steps = settings.finetune_steps
    finetune_s = 0.0
    device = pick_device(settings.device)
    if steps > 0:
        cfg = TrainConfig(
            steps=steps,
            batch_size=settings.batch_size,
            bptt=settings.bptt,
            lr=settings.lr,
            eval_every=max(1, steps // max(1, settings.evals)),
            eval_tokens=settings.eval_tokens,
            patience=None,
            validate_start=False,  # fixed fidelity: every trial trains its steps
            device=settings.device,
            seed=settings.seed,
            distill_from=copy.deepcopy(dense) if settings.distill else None,
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
        steps=steps,
        curve=curve,
        model=model,
    )
