"""Training and evaluation of word-level LMs: one loop for pretraining, trials and final training.

A model maps ids (T, B) and a carried state to logits (T, B, V) and the new state (truncated
BPTT: the state is detached between windows). Compressed modules are told the progress of
training through `on_progress` (pruning ramps, doping anneals, CMR).
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.data.batching import batchify, bptt_windows, num_windows


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
def evaluate_perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 10, bptt: int = 35,
                        device: torch.device | str = "cpu", max_tokens: int | None = None) -> float:
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
    steps: int | None = None  # stop after this many windows (None: epochs decide)
    epochs: float = 1.0
    batch_size: int = 32
    bptt: int = 35
    lr: float = 2e-3
    weight_decay: float = 0.0
    clip: float = 0.25  # gradient-norm clip, the usual guard for LSTM LMs
    eval_every: int | None = None  # windows between validation passes (None: once per epoch)
    eval_tokens: int | None = None  # cap validation cost during training
    patience: int = 2  # validations without improvement before stopping (lr is quartered at each)
    device: str = "auto"
    seed: int = 0
    distill_from: nn.Module | None = field(default=None, repr=False)  # teacher for soft targets
    distill_weight: float = 0.5
    log_every: int = 50  # steps between on_log records (a short trial asks for more)


@dataclass
class TrainResult:
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    best_val_ppl: float = math.inf
    eval_seconds: float = 0.0  # validation inside training (part of `seconds`)
    history: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def _windows(columns: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from bptt_windows(columns, bptt)


def train_lm(model: nn.Module, train_ids: torch.Tensor, valid_ids: torch.Tensor, cfg: TrainConfig,
             on_log: Callable[[dict], None] | None = None,
             on_eval: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train with Adam and truncated BPTT; keep the weights of the best validation perplexity.

    `on_log` gets progress records (step, loss, tokens/s, eta); `on_eval(step, val_ppl)` is
    called after each validation and may raise to stop (early stopping of weak trials).
    """
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    model.to(device)
    if cfg.distill_from is not None:
        cfg.distill_from.to(device).eval()
    columns = batchify(train_ids, cfg.batch_size).to(device)
    per_epoch = num_windows(columns, cfg.bptt)
    total_steps = cfg.steps if cfg.steps is not None else max(1, int(round(cfg.epochs * per_epoch)))
    eval_every = cfg.eval_every or min(per_epoch, total_steps)
    settle = settles_at(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    result = TrainResult()
    best_state = None
    bad_evals = 0
    state = None
    start = time.perf_counter()
    windows = _windows(columns, cfg.bptt)
    model.train()
    for step in range(1, total_steps + 1):
        set_progress(model, (step - 1) / total_steps)
        x, y = next(windows)
        if x.size(0) < cfg.bptt:  # wrapped around: start the stream again with a fresh state
            state = None
        state = _detach(state)
        with _autocast(device):
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            if cfg.distill_from is not None:
                with torch.no_grad():
                    teacher, _ = cfg.distill_from(x)
                soft = F.kl_div(F.log_softmax(logits.float(), -1), F.log_softmax(teacher.float(), -1),
                                log_target=True, reduction="batchmean") / x.size(0)
                loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * soft
        if not torch.isfinite(loss):
            raise DivergedError(f"loss became {loss.item()} at step {step}")
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
            on_log({"step": step, "steps": total_steps, "loss": loss.item(), "tokens_per_s": result.tokens / elapsed,
                    "eta_s": elapsed / step * (total_steps - step)})
        if step % eval_every == 0 or step == total_steps:
            set_progress(model, step / total_steps)
            eval_start = time.perf_counter()
            val = evaluate_perplexity(model, valid_ids, device=device, max_tokens=cfg.eval_tokens, bptt=cfg.bptt)
            result.eval_seconds += time.perf_counter() - eval_start
            result.history.append({"step": step, "val_ppl": val, "lr": opt.param_groups[0]["lr"]})
            if step / total_steps < settle:
                pass  # mid-ramp: a denser model than the one stored; neither best nor a plateau
            elif val < result.best_val_ppl:
                result.best_val_ppl, bad_evals = val, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
                for group in opt.param_groups:
                    group["lr"] /= 4
            if on_eval is not None:
                on_eval(step, val)
            if cfg.steps is None and bad_evals >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    set_progress(model, 1.0)  # at the stored form, whatever state was restored
    result.seconds = time.perf_counter() - start
    return result
