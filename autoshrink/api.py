"""The Python API: what the CLI and users call.

    import autoshrink
    model = autoshrink.load("kjv-lstm-tiny")
    autoshrink.sites(model)
    small = autoshrink.compress(model, {"decoder": {"method": "groupreduce", "rank": 8}})
    hf = autoshrink.load("path/to/hf-folder")       # a local Hugging Face causal LM (save_pretrained)
    autoshrink.stored_bytes(small)
    result = autoshrink.search("25x", trials=8)      # result.front: the Pareto front
    autoshrink.front(result.run_dir)                 # the front of a run folder (also while it runs)
    final = autoshrink.train(result.run_dir)         # final training of the best front plan, exported
    autoshrink.evaluate(final.out)                   # test perplexity, bytes, ratio, latency
    autoshrink.load(final.out)                       # the exported compressed model
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autoshrink.errors import UserError
from autoshrink.models import discover_sites
from autoshrink.sites import Site
from autoshrink.export import is_compressed_export, load_compressed
from autoshrink.models.checkpoint import META, load_dense
from autoshrink.models.hf import is_hf_folder, load_hf
from autoshrink.models.presets import PRESETS
from autoshrink.models import pretrain as _pretrain
from autoshrink import plan as _plan


def load(name_or_path: str, data: str = "kjv", seed: int = 0, device: str = "auto",
         on_log: Callable[[dict], None] | None = None) -> nn.Module:
    """A ready model: a preset name (pretrained on `data`, cached), a saved autoshrink model
    folder: a dense checkpoint or a compressed export (`autoshrink train`), told apart by the
    "format" of its model.json, or a local Hugging Face causal LM folder (config.json, weights
    and tokenizer, as `save_pretrained` writes them; never downloaded).

    The model carries its vocabulary as `model.vocab` (word frequencies for vocabulary methods;
    for a Hugging Face model its tokenizer, whose counts come with a corpus: load_lm_data) and
    its model.json as `model.meta`.
    """
    if name_or_path in PRESETS:
        model, vocab, meta = _pretrain.pretrained(name_or_path, data, seed=seed, device=device, on_log=on_log)
    else:
        path = Path(name_or_path).expanduser()
        if not path.exists():
            raise UserError(f"no model {name_or_path!r}: use a preset ({', '.join(PRESETS)}) or a model folder")
        if is_hf_folder(path):
            model, vocab, meta = load_hf(path)
        elif (path / META).is_file():
            model, vocab, meta = load_compressed(path) if is_compressed_export(path) else load_dense(path)
        else:
            raise UserError(f"{path} is neither an autoshrink model folder (model.json) nor a Hugging Face model "
                            f"folder (config.json)")
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
    return _plan.compress(model, plan, freqs=freqs if freqs is not None else _freqs(model))


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


def front(run_dir: str | Path):
    """The Pareto front of a run folder as a DataFrame (read from its study; fine while it runs)."""
    from autoshrink.front import front_table
    return front_table(run_dir)


def train(run_dir: str | Path, trial: str | int = "best", **options: Any):
    """Final (longer) training of one front plan of a run, exported to RUN_DIR/final (or `out`).
    Options are the CLI's: steps, epochs, out, device, distill, data. Returns a FinalModel
    (out, metrics, model)."""
    from autoshrink.train import train_trial
    return train_trial(run_dir, trial=trial, **options)


def evaluate(path: str | Path, data: str | None = None, **options: Any) -> dict:
    """test_ppl, stored_bytes, ratio, latency_ms, tokens_per_s of an export, a dense model folder or a preset."""
    from autoshrink.evaluate import evaluate_dir
    return evaluate_dir(path, data=data, **options)


def pretrain(model: str = "kjv-lstm", data: str = "kjv", epochs: float | None = None, device: str = "auto",
             seed: int = 0, **kwargs: Any) -> Path:
    """Pretrain a preset from scratch and cache it; returns the checkpoint folder."""
    return _pretrain.pretrain(model, data, epochs=epochs, device=device, seed=seed, **kwargs)
