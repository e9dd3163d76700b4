"""Pretraining and caching of the dense reference models.

`pretrained(name, data)` returns a trained model, from (in order) the cache
(`$AUTOSHRINK_CACHE` or ~/.cache/autoshrink), the weights shipped in the package (kjv-lstm on
kjv, seed 0), or a fresh pretraining run that is then cached.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Callable

import torch

from autoshrink.data import corpus_key, load_lm_data
from autoshrink.data.cache import cache_root
from autoshrink.models.checkpoint import is_dense_checkpoint, load_dense, save_dense
from autoshrink.models.lstm_lm import LSTMLM
from autoshrink.models.presets import get_preset
from autoshrink.models.progress import TrainingProgress
from autoshrink.models.training import TrainConfig, evaluate_perplexity, pick_device, train_lm
from autoshrink.data.vocab import Vocab

SHIPPED = Path(__file__).resolve().parent.parent / "pretrained"


def cache_dir(name: str, data: str, seed: int) -> Path:
    return cache_root() / f"{name}-{corpus_key(data)}-seed{seed}"


def shipped_dir(name: str, data: str, seed: int) -> Path | None:
    folder = SHIPPED / name
    if corpus_key(data) == "kjv" and seed == 0 and is_dense_checkpoint(folder):
        return folder
    return None


def pretrain(
    name: str = "kjv-lstm",
    data: str = "kjv",
    epochs: float | None = None,
    device: str = "auto",
    seed: int = 0,
    out: Path | None = None,
    command: str | None = None,
    on_log: Callable[[dict], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> Path:
    """Train preset `name` on `data` from scratch; save to the cache (or `out`); return the folder."""
    preset = get_preset(name)
    lm = load_lm_data(data, max_words=preset.max_words)
    torch.manual_seed(seed)
    model = preset.build(len(lm.vocab))
    cfg = TrainConfig(**{**preset.train.__dict__, "device": device, "seed": seed, "log_every": 10})
    if epochs is not None:
        cfg.epochs = epochs
    result = train_lm(model, lm.train, lm.valid, cfg, on_log=on_log, on_eval=on_eval)
    dev = pick_device(device)
    val = evaluate_perplexity(model, lm.valid, device=dev)
    test = evaluate_perplexity(model, lm.test, device=dev)
    info = {
        "preset": name,
        "data": corpus_key(data),
        "seed": seed,
        "pretrain": {
            "command": command or f"pretrain({name!r}, {data!r}, seed={seed})",
            "epochs": cfg.epochs,
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "tokens_per_s": round(result.tokens_per_s),
            "val_ppl": round(val, 3),
            "test_ppl": round(test, 3),
            "history": result.history,
            "device": str(dev),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    return save_dense(out or cache_dir(name, data, seed), model.cpu(), lm.vocab, info)


def pretrained(
    name: str = "kjv-lstm",
    data: str = "kjv",
    seed: int = 0,
    device: str = "auto",
    on_log: Callable[[dict], None] | None = None,
) -> tuple[LSTMLM, Vocab, dict]:
    """A pretrained preset: cached, shipped, or trained now (and cached). Pretraining on first use
    is announced on stderr and followed by `on_log`, or else by its own progress bar (lines when
    stderr is not a terminal)."""
    get_preset(name)
    folder = cache_dir(name, data, seed)
    if not is_dense_checkpoint(folder):
        folder = shipped_dir(name, data, seed)
    if folder is None:
        progress = None
        if on_log is None:
            progress = on_log = TrainingProgress(f"pretraining {name}", leave=True)
            progress.log(
                f"{name} on {corpus_key(data)} (seed {seed}) is not in the cache yet: pretraining it once, "
                f"then it is kept in {cache_dir(name, data, seed)}"
            )
        try:
            folder = pretrain(name, data, device=device, seed=seed, on_log=on_log)
        finally:
            if progress is not None:
                progress.close()
    return load_dense(folder)
