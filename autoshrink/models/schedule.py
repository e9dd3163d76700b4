"""Learning-rate schedules of `train_lm` (models/training.py).

- "cosine" (fine-tuning, trials, final training): a short linear warm-up, then cosine decay to
  zero at the step cap. A converged model is not thrown off by a full-size first step, and the
  last steps are small ones that settle it.
  Once validation stops improving (`patience`), the rest of the decay is compressed into a
  cooldown: the lr goes from where it is to zero over COOLDOWN of the horizon (half a cosine),
  and the run stops at its end. Stopping at once would keep a model trained only at a high lr:
  the uniform lstm-25x plan stopped at step 940 of 2,265 with the lr at 0.6 of its peak, test
  40.19, against 39.54 when trained to the end (results/toward_uniform-lstm-25x-converged*.md).
- "plateau" (pretraining from scratch): constant, divided by 4 at every validation that does
  not improve (the classic LSTM LM recipe; `train_lm` applies the cuts).
"""

from __future__ import annotations

import math

from autoshrink.errors import UserError

SCHEDULES = ("cosine", "plateau")
COOLDOWN = 0.2  # share of the horizon the lr decays to zero over once validation stops improving (cosine)


def check_schedule(name: str) -> str:
    if name not in SCHEDULES:
        raise UserError(f"unknown learning-rate schedule {name!r}: use {' or '.join(SCHEDULES)}")
    return name


def warmup_steps(horizon: int, warmup: float) -> int:
    """Warm-up length: a fraction of the run, at least one step when a fraction is asked for."""
    return max(1, round(warmup * horizon)) if warmup > 0 else 0


def cosine_factor(step: int, horizon: int, warmup: float) -> float:
    """Multiplier of the base lr for `step` (1-based) of a run of `horizon` steps."""
    ramp = warmup_steps(horizon, warmup)
    if step <= ramp:
        return step / ramp
    if horizon <= ramp:
        return 1.0
    progress = min(1.0, (step - ramp) / (horizon - ramp))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def cooldown_factor(step: int, start: int, length: int, from_factor: float) -> float:
    """Multiplier of the base lr for `step` of a cooldown that began after step `start` at
    `from_factor` and reaches zero `length` steps later."""
    progress = min(1.0, max(0, step - start) / max(1, length))
    return from_factor * 0.5 * (1.0 + math.cos(math.pi * progress))
