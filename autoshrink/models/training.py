"""Training and evaluation of word-level LMs: one loop for pretraining, trials and final training.

A model maps ids (T, B) and a carried state to logits (T, B, V) and the new state (truncated
BPTT: the state is detached between windows). Compressed modules are told the progress of
training through `on_progress` (pruning ramps, doping anneals, CMR).

The default recipe (measured in results/recipe-allocated/recipe.md, `python -m autoshrink.bench.recipe`): Adam at
DEFAULT_LR with a 5% warm-up and cosine decay to the step cap, distillation from the dense model
at DEFAULT_DISTILL_WEIGHT where a teacher is given, validation every `eval_every` steps, stop
after `patience` validations without improvement (under cosine, at the end of a cooldown: the lr
decays to zero over COOLDOWN of the horizon first), and the best validated state restored, the
starting weights included: a converged model comes out no worse than it went in.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.data.batching import batchify, bptt_windows, num_windows
from autoshrink.models.distill import Teacher, mixed_loss
from autoshrink.models.schedule import COOLDOWN, check_schedule, cooldown_factor, cosine_factor


# results/recipe-allocated/recipe.md, the allocated 25x plan, 600 distilled steps: 5e-4 and 2e-3 tie
# (val 39.93 and 39.82, test 39.15 and 39.34); at a 1500-step cap 2e-3 stays high long enough to undo
# the data-aware start (plateau at step 400, test 40.37: results/pipeline.md), and the default cap
# is 3 epochs, so the lower one. In trials, 2e-3 made every allocated plan worse (results/trial_lr.md).
DEFAULT_LR = 5e-4
# Distillation beat none at both learning rates (val -3.3% and -4.4%: results/recipe-allocated/recipe.md).
# Share of the KL term when a teacher is given. results/compass-25x.md, the converged tier's 25x
# plans trained 3 epochs at 0.25 against 0.5: dense 37.83 / 38.15, autoshrink 38.46 / 38.65, best
# uniform 39.73 / 40.41 (KL alone, 1.0: autoshrink 41.22; CE alone, at 600 steps: worse than 0.5).
DEFAULT_DISTILL_WEIGHT = 0.25
TRIAL_DISTILL_WEIGHT = 0.5  # trials distil (--distill) as results/trial_distill.md measured them, resumes alike


class DivergedError(RuntimeError):
    """The loss became NaN or infinite; the trial that hit it fails with this reason."""


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _detach(state):
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    return type(state)(_detach(s) for s in state)


def _autocast(device: torch.device):
    # Mixed precision only where it pays: on CUDA (bf16 where supported).
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module,
    ids: torch.Tensor,
    batch_size: int = 10,
    bptt: int = 35,
    device: torch.device | str = "cpu",
    max_tokens: int | None = None,
) -> float:
    """Perplexity over a 1-D id stream (the first `max_tokens` of it when given)."""
    device = torch.device(device)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    columns = batchify(ids, batch_size).to(device)
    was_training = model.training
    model.eval()
    total, count, state = 0.0, 0, None
    with _autocast(device):
        for x, y in bptt_windows(columns, bptt):
            logits, state = model(x, state)
            total += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            count += y.numel()
    model.train(was_training)
    return math.exp(min(total / count, 50.0))


def settles_at(model: nn.Module) -> float:
    """The training fraction after which every compressed module is at its stored form."""
    return max((getattr(m, "settles_at", 0.0) for m in model.modules() if m is not model), default=0.0)


def set_progress(model: nn.Module, fraction: float) -> None:
    for module in model.modules():
        hook = getattr(module, "on_progress", None)
        if hook is not None and module is not model:
            hook(fraction)


@dataclass
class TrainConfig:
    # Caps: the run ends at the first one reached. The schedule spans the step/epoch cap
    # (neither given: one epoch); `time` (seconds of this call) only cuts it short.
    steps: int | None = None  # windows in all, `schedule_from` included
    epochs: float | None = None
    time: float | None = None
    batch_size: int = 32
    bptt: int = 35
    lr: float = DEFAULT_LR
    schedule: str = "cosine"  # or "plateau" (lr / 4 at each validation without improvement): models/schedule.py
    warmup: float = 0.05  # share of the schedule spent ramping the lr up (cosine)
    weight_decay: float = 0.0
    clip: float = 0.25  # gradient-norm clip, the usual guard for LSTM LMs
    eval_every: int | None = None  # windows between validation passes (None: once per epoch)
    eval_at: tuple[int, ...] | None = None  # validate at exactly these steps of this call instead (and at the end)
    eval_tokens: int | None = None  # cap validation cost during training
    patience: int | None = 3  # validations without improvement before stopping (None: never stop early)
    cooldown: float = COOLDOWN  # cosine: share of the horizon the lr decays to zero over before that stop (0: at once)
    validate_start: bool = True  # the starting weights compete for "best": a converged model is kept
    schedule_from: int = 0  # steps already trained by an earlier call (a resumed run): the lr continues
    # A resumed run's validations so far (step, val_ppl), so early stopping and the plateau lr go on
    # from them: the best to beat, the validations since it, the lr cuts already made.
    prior_history: tuple[tuple[int, float], ...] = ()
    ramp_steps: int | None = None  # steps over which pruning/doping ramps reach their stored form (None: all)
    device: str = "auto"
    seed: int = 0
    distill_from: nn.Module | None = field(default=None, repr=False)  # teacher for soft targets
    distill_weight: float = DEFAULT_DISTILL_WEIGHT
    log_every: int = 50  # steps between on_log records (a short trial asks for more)

    def horizon(self, per_epoch: int) -> int:
        """The schedule's length in steps (what `steps`/`epochs` allow; one epoch when neither says)."""
        caps = [
            c
            for c in (self.steps, None if self.epochs is None else max(1, round(self.epochs * per_epoch)))
            if c is not None
        ]
        return min(caps) if caps else per_epoch


@dataclass
class TrainResult:
    steps: int = 0  # steps of this call
    tokens: int = 0
    seconds: float = 0.0
    best_val_ppl: float = math.inf
    best_step: int | None = None  # step of the restored state (0: the starting weights)
    eval_seconds: float = 0.0  # validation inside training (part of `seconds`)
    stopped: str = "steps"  # why it ended: steps | plateau (after its cooldown, under cosine) | time
    # the step the cooldown began at (validation stopped improving; maybe before a resume)
    cooldown_from: int | None = None
    history: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _windows(columns: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from bptt_windows(columns, bptt)


class PriorStopping(NamedTuple):
    best: float  # the best val ppl so far: the bar to beat
    since: int  # validations since it
    cuts: int  # validations that did not improve (the plateau schedule's lr cuts)
    cooldown_from: int | None  # the step of the validation that used up `patience` (a cooldown began there)


def prior_stopping(history: Sequence[tuple[int, float]], patience: int | None = None) -> PriorStopping:
    """What a run's earlier validations, in step order, leave to early stopping; a first
    validation (step 0, the start) only sets the bar."""
    best, since, cuts, cooldown_from = math.inf, 0, 0, None
    for step, val in history:
        if val < best:
            best, since = val, 0
        elif step > 0:
            since, cuts = since + 1, cuts + 1
            if patience is not None and since >= patience and cooldown_from is None:
                cooldown_from = step
    return PriorStopping(best, since, cuts, cooldown_from)


def train_lm(
    model: nn.Module,
    train_ids: torch.Tensor,
    valid_ids: torch.Tensor,
    cfg: TrainConfig,
    on_log: Callable[[dict], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train with Adam and truncated BPTT; keep the weights of the best validation perplexity.

    `on_log` gets progress records (step, steps, loss, lr, tokens/s, eta_s); `on_eval(step, val_ppl)`
    is called after each validation (step 0: the starting weights) and may raise to stop (early
    stopping of weak trials).
    """
    check_schedule(cfg.schedule)
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device)
    teacher = Teacher(cfg.distill_from, device) if cfg.distill_from is not None and cfg.distill_weight > 0 else None
    columns = batchify(train_ids, cfg.batch_size).to(device)
    per_epoch = num_windows(columns, cfg.bptt)
    horizon = cfg.horizon(per_epoch)
    total_steps = max(0, horizon - cfg.schedule_from)  # this call's steps
    eval_every = cfg.eval_every or min(per_epoch, max(1, total_steps))
    eval_at = set(cfg.eval_at) if cfg.eval_at is not None else None
    settle = settles_at(model)
    ramp = max(1, min(cfg.ramp_steps or total_steps, total_steps))

    def progress(step: int) -> float:
        """The fraction of the ramps done after `step` steps (modules settle at `settle`)."""
        return min(1.0, step / ramp) if total_steps else 1.0

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    result = TrainResult()
    best_state = None
    prior = prior_stopping(cfg.prior_history, cfg.patience)
    result.best_val_ppl, bad_evals, plateau_scale = prior.best, prior.since, 0.25**prior.cuts
    cooling = cfg.schedule == "cosine" and cfg.cooldown > 0 and cfg.patience is not None
    cool_start = prior.cooldown_from if cooling else None  # a step of the whole run
    result.cooldown_from = cool_start
    cool_steps = max(1, round(cfg.cooldown * horizon))
    last_eval_s = 0.0
    start = time.perf_counter()

    def validate(step: int) -> None:
        nonlocal best_state, bad_evals, plateau_scale, last_eval_s
        set_progress(model, progress(step))
        eval_start = time.perf_counter()
        val = evaluate_perplexity(model, valid_ids, device=device, max_tokens=cfg.eval_tokens, bptt=cfg.bptt)
        last_eval_s = time.perf_counter() - eval_start
        result.eval_seconds += last_eval_s
        result.history.append(
            {"step": cfg.schedule_from + step, "val_ppl": val, "lr": opt.param_groups[0]["lr"] if step else 0.0}
        )  # the lr of the last step
        if total_steps and progress(step) < settle:
            pass  # mid-ramp: a denser model than the one stored; neither best nor a plateau
        elif val < result.best_val_ppl:
            result.best_val_ppl, result.best_step, bad_evals = val, step, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif step > 0:
            bad_evals += 1
            if cfg.schedule == "plateau":
                plateau_scale /= 4
        if on_eval is not None:
            on_eval(step, val)

    def lr_factor(step: int) -> float:
        """The base lr's multiplier at `step` of the whole run."""
        if cfg.schedule == "plateau":
            return plateau_scale
        factor = cosine_factor(step, horizon, cfg.warmup)
        if cool_start is None:
            return factor
        at_start = cosine_factor(cool_start, horizon, cfg.warmup)
        return min(factor, cooldown_factor(step, cool_start, cool_steps, at_start))

    if cfg.validate_start and settle <= 0:
        validate(0)
    windows = _windows(columns, cfg.bptt)
    state = None
    model.train()
    for step in range(1, total_steps + 1):
        if cfg.time is not None and time.perf_counter() - start + last_eval_s >= cfg.time:
            result.stopped = "time"  # the closing validation below still fits in the cap
            break
        set_progress(model, progress(step - 1))
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg.schedule_from + step)
        x, y = next(windows)
        if x.size(0) < cfg.bptt:  # the stream's short last window: carried states start afresh (as pretraining did)
            state = None
            if teacher is not None:
                teacher.reset()
        state = _detach(state)
        with _autocast(device):
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            if teacher is not None:
                loss = mixed_loss(loss, logits, teacher.logits(x), cfg.distill_weight)
        if not torch.isfinite(loss):
            raise DivergedError(f"loss became {loss.item()} at step {cfg.schedule_from + step}")
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(params, cfg.clip)
        scaler.step(opt)
        scaler.update()
        result.steps = step
        result.tokens += y.numel()
        if on_log is not None and (step % cfg.log_every == 0 or step == total_steps):
            elapsed = time.perf_counter() - start
            eta = elapsed / step * (total_steps - step)
            if cfg.time is not None:
                eta = min(eta, max(0.0, cfg.time - elapsed))
            on_log(
                {
                    "step": cfg.schedule_from + step,
                    "steps": horizon,
                    "loss": loss.item(),
                    "lr": opt.param_groups[0]["lr"],
                    "tokens_per_s": result.tokens / elapsed,
                    "eta_s": eta,
                }
            )
        at_eval = (step in eval_at if eval_at is not None else step % eval_every == 0) or step == total_steps
        cooled = cool_start is not None and cfg.schedule_from + step >= cool_start + cool_steps
        if at_eval or cooled:
            validate(step)
        if cooled:
            result.stopped = "plateau"
            break
        if at_eval and cfg.patience is not None and bad_evals >= cfg.patience:
            if not cooling:
                result.stopped = "plateau"
                break
            if cool_start is None:
                cool_start = result.cooldown_from = cfg.schedule_from + step
    if (
        result.stopped == "time"
        and result.steps
        and (not result.history or result.history[-1]["step"] != cfg.schedule_from + result.steps)
    ):
        validate(result.steps)  # the steps since the last validation are judged too
    if best_state is not None:
        model.load_state_dict(best_state)
    set_progress(model, 1.0)  # at the stored form, whatever state was restored
    result.seconds = time.perf_counter() - start
    return result
