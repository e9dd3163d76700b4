"""The Python API: what the CLI and users call. Nothing inside the package imports it.

import autoshrink
from autoshrink import SearchConfig, TrainConfig
model = autoshrink.load("kjv-lstm-tiny")
autoshrink.sites(model)
small = autoshrink.compress(model, {"decoder": {"method": "groupreduce", "rank": 8}})
autoshrink.stored_bytes(small)
result = autoshrink.search(SearchConfig(budget="25x", trials=8))   # result.front: the Pareto front
autoshrink.front(result.run_dir)                                  # the front of a run folder (also while it runs)
autoshrink.profile(SearchConfig(budget="25x", run_dir="runs/a"))   # calibration, profile, allocation; no trial
print(autoshrink.profile_text("runs/a"))                          # each site's options alone, by bytes
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
    from autoshrink.search.profile_only import ProfileRun

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
    "plot_profile",
    "plot_profile_beside",
    "pretrain",
    "profile",
    "profile_table",
    "profile_text",
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


def profile(
    config: SearchConfig | str, command: str | None = None, log: Callable[[str], None] | None = None
) -> "ProfileRun":
    """A search's cheap steps alone, no trial: calibration, each site's options profiled alone
    (RUN_DIR/profile.csv, resumed) and the knapsack's allocation for the budget
    (RUN_DIR/allocation.json). `autoshrink.search` on the same run_dir reads the profile instead
    of measuring it. Returns a ProfileRun (run_dir, allocation, config)."""
    from autoshrink.search.profile_only import profile_only

    return profile_only(SearchConfig(budget=config) if isinstance(config, str) else config, command=command, log=log)


def profile_table(run_dir: str | Path) -> "pd.DataFrame":
    """The profile of a run folder, one row per (site, option): method, knobs, bytes, the site's
    ratio, loss increase, perplexity with that site alone compressed, seconds, whether the option
    is on the site's bytes/loss Pareto front and whether the allocation chose it."""
    from autoshrink.front.profile_table import read_profile_table

    return read_profile_table(run_dir).table


def profile_text(run_dir: str | Path, fmt: str = "table") -> str:
    """The profile of a run folder as a table per site, csv or json (what `autoshrink profile` prints)."""
    from autoshrink.front.profile_table import read_profile_table, render

    return render(read_profile_table(run_dir), fmt)


def plot_profile(run_dir: str | Path, path: str | Path) -> Path:
    """Draw the profile of a run folder as curves (a panel per site) to a PNG at `path`."""
    from autoshrink.front.profile_plot import plot_profile as _plot

    return _plot(run_dir, path)


def plot_profile_beside(run_dir: str | Path, front_png: str | Path) -> Path | None:
    """The profile's curves beside a front plot (front.png -> front-profile.png); None when the
    run has no profile.csv."""
    from autoshrink.front.profile_plot import beside
    from autoshrink.search.run_folder import PROFILE

    return plot_profile(run_dir, beside(front_png)) if (Path(run_dir) / PROFILE).is_file() else None


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
