"""The Python API: what the CLI and users call. Nothing inside the package imports it.

import autoshrink
from autoshrink import SearchConfig, TrainConfig
model = autoshrink.load("kjv-lstm-tiny")
autoshrink.sites(model)
small = autoshrink.compress(model, {"decoder": {"method": "groupreduce", "rank": 8}})
autoshrink.stored_bytes(small)
result = autoshrink.search(SearchConfig(budget="25x", trials=8))   # result.front: the Pareto front
autoshrink.front(result.run_dir)                                  # the front of a run folder (also while it runs)
final = autoshrink.train(result.run_dir, TrainConfig(steps=2000))  # final training of the best front plan
autoshrink.evaluate(final.out)                                    # test perplexity, bytes, ratio, latency
autoshrink.load(final.out)                                        # the exported compressed model
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch
from torch import nn

from autoshrink import plan as _plan
from autoshrink.final import export as _export  # noqa: F401  (registers the compressed format with load)
from autoshrink.final.config import TrainConfig
from autoshrink.methods import MethodConfig, config_class, method_names
from autoshrink.models import all_sites
from autoshrink.models import pretrain as _pretrain
from autoshrink.models.adapter import adapt
from autoshrink.models.load import load
from autoshrink.search.config import SearchConfig
from autoshrink.search.trial import val_slice
from autoshrink.sites import Site

if TYPE_CHECKING:
    import pandas as pd

    from autoshrink.final.train import FinalModel
    from autoshrink.search.controller import SearchResult

VAL_SLICE = val_slice()  # the validation tokens of a search's val ppl (named wherever it is printed)

__all__ = [
    "adapt",
    "compress",
    "dense_bytes",
    "evaluate",
    "front",
    "front_text",
    "load",
    "methods",
    "plot_front",
    "pretrain",
    "search",
    "sites",
    "stored_bytes",
    "train",
]


def sites(model: nn.Module | str) -> list[Site]:
    """Every site of a model (or of a preset / model folder by name): the dense ones a plan may
    compress, and those already compressed, with their `method` and `stored_bytes` set."""
    if isinstance(model, str):
        model = load(model)
    return all_sites(model)


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


def dense_bytes(model: nn.Module) -> int:
    """fp32 bytes of every parameter of a dense model (shared ones once): a ratio's numerator."""
    return _plan.dense_bytes(model)


def methods() -> list[type[MethodConfig]]:
    """The config class of every registered compression method (its knobs: `.knobs()`)."""
    return [config_class(name) for name in method_names()]


def search(
    config: SearchConfig | str, command: str | None = None, log: Callable[[str], None] | None = None
) -> "SearchResult":
    """Per-layer search to a Pareto front (see SearchConfig for every setting and its default;
    a string is a budget with every other setting at its default). Returns a SearchResult
    (run_dir, study, front DataFrame). `log` gets the progress lines (default: stderr)."""
    from autoshrink.search.controller import search as _search

    return _search(SearchConfig(budget=config) if isinstance(config, str) else config, command=command, log=log)


def front(run_dir: str | Path) -> "pd.DataFrame":
    """The Pareto front of a run folder as a DataFrame (read from its study; fine while it runs)."""
    from autoshrink.front.table import front_table

    return front_table(run_dir)


def front_text(run_dir: str | Path, fmt: str = "table") -> str:
    """The front of a run folder rendered as a table, csv or json (what `autoshrink front` prints)."""
    from autoshrink.front.table import read_front, render

    return render(read_front(run_dir), fmt)


def plot_front(run_dir: str | Path, path: str | Path) -> Path:
    """Draw the front of a run folder to a PNG at `path`."""
    from autoshrink.front.plot import plot

    return plot(run_dir, path)


def train(
    run_dir: str | Path,
    config: TrainConfig | None = None,
    on_log: Callable[[dict], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> "FinalModel":
    """Final (longer) training of one front plan of a run, exported to RUN_DIR/final (or
    config.out); see TrainConfig for every setting. Returns a FinalModel (out, metrics, model)."""
    from autoshrink.final.train import train_trial

    return train_trial(run_dir, config or TrainConfig(), on_log=on_log, on_eval=on_eval, log=log)


def evaluate(path: str | Path, data: str | None = None, device: str = "cpu", model: Any = None) -> dict:
    """test_ppl, stored_bytes, ratio, latency_ms, tokens_per_s of an export, a dense model folder or a preset
    (`model`: for the export of your own torch model, a fresh instance of its class)."""
    from autoshrink.final.evaluate import evaluate_dir

    return evaluate_dir(path, data=data, device=device, model=model)


def pretrain(
    model: str = "kjv-lstm",
    data: str = "kjv",
    epochs: float | None = None,
    device: str = "auto",
    seed: int = 0,
    out: Path | None = None,
    command: str | None = None,
    on_log: Callable[[dict], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> Path:
    """Pretrain a preset from scratch and cache it (or write it to `out`); returns the folder."""
    return _pretrain.pretrain(
        model, data, epochs=epochs, device=device, seed=seed, out=out, command=command, on_log=on_log, on_eval=on_eval
    )
