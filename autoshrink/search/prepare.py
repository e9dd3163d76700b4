"""What a search and `autoshrink profile` both do before any trial: name the run (budget, space,
model, run folder), load the dense model and its data, check the budget can be met, and
calibrate (docs/how-it-works.md, steps 1-3). `search()` goes on to trials; `profile_only` stops
after the profile and the knapsack (search/profile_only.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
from torch import nn

from autoshrink.calibrate import calibrate
from autoshrink.data import LMData, corpus_key, load_lm_data
from autoshrink.errors import UserError
from autoshrink.models import discover_sites
from autoshrink.models.adapter import adapt
from autoshrink.models.load import load
from autoshrink.plan import ModelFile, dense_bytes as model_dense_bytes
from autoshrink.search.budget import Budget, check_feasible, parse_budget
from autoshrink.search.config import SearchConfig, canonical
from autoshrink.search.space import DEFAULT_SPACE, SearchSpace, default_space, load_space, space_digest
from autoshrink.sites import Site


class Target(NamedTuple):
    """What a run is, before anything is loaded: bad input fails here, at no cost."""

    budget: Budget
    space: SearchSpace | None  # None: the model's default space, chosen once its sites are known
    model_name: str  # canonical: a folder by its absolute path, so `autoshrink train` finds it from anywhere
    data_path: str | None  # the corpus as given on the command line (None: LMData given in Python)
    folder: Path


class Inputs(NamedTuple):
    """The dense model and everything the budget is measured against."""

    dense: nn.Module
    data: LMData
    sites: list[Site]
    space: SearchSpace
    dense_bytes: int  # fp32 bytes of every parameter: a ratio's numerator
    freqs: torch.Tensor
    model_file: ModelFile  # the dense model's file (its tensors): what a plan changes
    max_bytes: int | None  # None for a latency budget


def default_run_dir(model_name: str, budget: Budget) -> Path:
    return Path("results/runs") / f"{Path(model_name).name}-{budget.slug}-{time.strftime('%Y%m%d-%H%M%S')}"


def target(c: SearchConfig) -> Target:
    """The run a resolved config names (SearchConfig.resolved)."""
    b = parse_budget(c.budget)
    spc = c.space if isinstance(c.space, SearchSpace) or c.space is None else load_space(c.space)
    data_path = c.data if isinstance(c.data, str) else None
    model_name = canonical("model", c.model)
    folder = Path(c.run_dir) if c.run_dir else default_run_dir(model_name, b)
    return Target(b, spc, model_name, data_path, folder)


def load_inputs(c: SearchConfig, t: Target, recorded: dict[str, Any], log: Callable[[str], None]) -> Inputs:
    """The dense model (a preset, a folder, or a torch module read by its forward conventions:
    models/adapter.py), its data and sites, the space, and the byte limit of the budget; a budget
    no plan of the space meets, or a space other than the one `recorded` (run.json) says, is refused."""
    model, data = c.model, c.data
    if isinstance(model, nn.Module):
        if not isinstance(data, LMData):
            data = load_lm_data(data, vocab=getattr(model, "vocab", None))
        dense = adapt(model, data.vocab)
    else:
        # the preset as shipped (pretraining seed 0): --seed is the search's, not a new pretraining's
        dense = load(model, data=data if isinstance(data, str) else "kjv", device=c.device)
        if not isinstance(data, LMData):
            data = load_lm_data(data, vocab=dense.vocab)
    dense = dense.cpu().eval()
    sites = discover_sites(dense)
    spc = t.space
    if spc is None:
        spc = load_space(default_space(sites))
        if spc.source != DEFAULT_SPACE:
            log(f"space: {spc.source} (the model has transformer sites; --space chooses another)")
    if recorded.get("space_digest", space_digest(spc)) != space_digest(spc):
        raise UserError(
            f"search space {spc.source} allows other choices than when the run in {t.folder} began: "
            "restore it, or use a new --run-dir"
        )
    nbytes = model_dense_bytes(dense)
    freqs = data.vocab.freqs
    model_file = ModelFile.of(dense, sites)
    max_bytes = check_feasible(t.budget, spc, sites, nbytes, freqs, model_file)
    return Inputs(dense, data, sites, spc, nbytes, freqs, model_file, max_bytes)


def run_identity(named: Target, inputs: Inputs) -> dict[str, Any]:
    """What run.json records of the run a search and a profile share: budget, model, data, space."""
    data = inputs.data
    return {
        "budget": named.budget.text,
        "budget_kind": named.budget.kind,
        "max_bytes": inputs.max_bytes,
        "model": named.model_name,
        "data": corpus_key(data.name) if isinstance(data.name, str) else data.name,
        "data_path": None if named.data_path is None else canonical("data", named.data_path),
        "space": canonical("space", inputs.space.source),
        "space_digest": space_digest(inputs.space),
    }


def calibration(inputs: Inputs, tokens: int, log: Callable[[str], None]) -> dict | None:
    """Per-site input statistics for data-aware builds over `tokens` training tokens (None for 0)."""
    if not tokens:
        return None
    started = time.time()
    stats = calibrate(inputs.dense, inputs.data.train, tokens=tokens, freqs=inputs.freqs)
    log(
        f"calibration: input statistics of {len(stats)} sites over {tokens:,} training tokens, "
        f"{time.time() - started:.0f} s (cached)"
    )
    return stats
