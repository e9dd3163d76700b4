"""The Python API: what the CLI and users call.

    import autoshrink
    model = autoshrink.load("kjv-lstm-tiny")
    autoshrink.sites(model)
    small = autoshrink.compress(model, {"decoder": {"method": "groupreduce", "rank": 8}})
    autoshrink.stored_bytes(small)
    result = autoshrink.search("25x", trials=8)      # result.front: the Pareto front
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autoshrink.errors import UserError
from autoshrink.models import Site, discover_sites
from autoshrink.models.checkpoint import is_dense_checkpoint, load_dense
from autoshrink.models.presets import PRESETS
from autoshrink.models import pretrain as _pretrain
from autoshrink import plan as _plan


def load(name_or_path: str, data: str = "kjv", seed: int = 0, device: str = "auto",
         on_log: Callable[[dict], None] | None = None) -> nn.Module:
    """A ready model: a preset name (pretrained on `data`, cached), or a saved autoshrink model folder.

    The model carries its vocabulary as `model.vocab` (word frequencies for vocabulary methods).
    """
    if name_or_path in PRESETS:
        model, vocab, meta = _pretrain.pretrained(name_or_path, data, seed=seed, device=device, on_log=on_log)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise UserError(f"no model {name_or_path!r}: use a preset ({', '.join(PRESETS)}) or a model folder")
        if not is_dense_checkpoint(path):
            raise UserError(f"{path} is not an autoshrink model folder (model.safetensors + model.json)")
        model, vocab, meta = load_dense(path)
    model.vocab = vocab
    model.meta = meta
    return model.eval()


def sites(model: nn.Module | str) -> list[Site]:
    """The compressible sites of a model (or of a preset / model folder by name)."""
    if isinstance(model, str):
        model = load(model)
    return discover_sites(model)


def _freqs(model: nn.Module) -> torch.Tensor | None:
    vocab = getattr(model, "vocab", None)
    return vocab.freqs if vocab is not None else None


def compress(model: nn.Module, plan: Mapping[str, Any] | str | Path, freqs: torch.Tensor | None = None) -> nn.Module:
    """A copy of `model` with each planned site compressed (word frequencies from model.vocab
    unless given)."""
    out = _plan.compress(model, plan, freqs=freqs if freqs is not None else _freqs(model))
    return out


def stored_bytes(model: nn.Module) -> int:
    """Exact stored bytes of a model, compressed or dense."""
    return _plan.stored_bytes(model)


def search(budget: str, model: str | nn.Module = "kjv-lstm", data: Any = "kjv", **options: Any):
    """Per-layer search to a Pareto front under `budget` ("25x", "1.5MB", "4ms"). `model` is a
    preset, a model folder, or any torch LM module (ids (T, B) -> (logits, state)); options are
    the CLI's: space, trials, timeout, finetune_steps, run_dir, device, seed, sampler, distill.
    Returns a SearchResult (run_dir, study, front DataFrame)."""
    from autoshrink.search.controller import search as _search
    return _search(budget, model=model, data=data, **options)


def pretrain(model: str = "kjv-lstm", data: str = "kjv", epochs: float | None = None, device: str = "auto",
             seed: int = 0, **kwargs: Any) -> Path:
    """Pretrain a preset from scratch and cache it; returns the checkpoint folder."""
    return _pretrain.pretrain(model, data, epochs=epochs, device=device, seed=seed, **kwargs)
