"""Plans: {site name: method config}, parsed from JSON and applied to a model.

A plan is plain JSON users can read and edit: {"decoder": {"method": "groupreduce", "blocks": 4}}.
Sites not named stay dense. Tied sites share one compressed weight, counted once.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from autoshrink.errors import UserError, read_user_json
from autoshrink.methods import (
    CompressedEmbedding,
    CompressedLinear,
    CompressedWeight,
    MethodConfig,
    config_from_dict,
    weight_class,
)
from autoshrink.models.discover import discover_sites
from autoshrink.plan.parametrize import in_place_weight, place_in_place
from autoshrink.sites import Site, SiteStats

Plan = dict[str, MethodConfig]


def parse_plan(plan: Mapping[str, Any] | str | Path) -> Plan:
    """A plan from a dict of dicts/configs, a JSON string or a JSON file."""
    if isinstance(plan, (str, Path)) and not str(plan).lstrip().startswith("{"):
        path = Path(plan)
        plan = read_user_json(path, "plan file")
    elif isinstance(plan, str):
        try:
            plan = json.loads(plan)
        except json.JSONDecodeError as e:
            raise UserError(f"plan is not valid JSON: {e}") from None
    if not isinstance(plan, Mapping):
        raise UserError(f"a plan maps site names to method configs, got {type(plan).__name__}")
    return {name: cfg if isinstance(cfg, MethodConfig) else config_from_dict(cfg) for name, cfg in plan.items()}


def plan_to_json(plan: Plan) -> dict[str, dict]:
    return {name: cfg.to_dict() for name, cfg in plan.items()}


def resolve(model: nn.Module, plan: Plan, sites: list[Site] | None = None) -> tuple[dict[str, Site], Plan]:
    """Check plan keys against the model's sites; map a tied partner's entry onto its owner."""
    sites = sites if sites is not None else discover_sites(model)
    by_name = {s.name: s for s in sites}
    unknown = [k for k in plan if k not in by_name]
    if unknown:
        raise UserError(f"plan names unknown site(s) {', '.join(unknown)}; sites: {', '.join(by_name)}")
    resolved: Plan = {}
    for name, cfg in plan.items():
        owner = by_name[name].tied_with or name
        if owner in resolved and resolved[owner] != cfg:
            raise UserError(f"sites {owner!r} and {name!r} share one weight but the plan gives them different methods")
        resolved[owner] = cfg
    for name, cfg in resolved.items():
        cfg.check_site(by_name[name])
    return by_name, resolved


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def dense_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W as m x n with y = W x, bias) of an Embedding, Linear or GPT-2 Conv1D."""
    if isinstance(module, nn.Embedding):
        return module.weight.detach(), None
    if isinstance(module, nn.Linear):
        return module.weight.detach(), module.bias
    return module.weight.detach().t(), getattr(module, "bias", None)  # Conv1D stores W^T


def compress(
    model: nn.Module,
    plan: Mapping[str, Any] | str | Path,
    freqs: torch.Tensor | None = None,
    sites: list[Site] | None = None,
    stats: dict[str, SiteStats] | None = None,
) -> nn.Module:
    """A new model whose planned sites are compressed, each initialised from its dense weight and,
    where `stats` has them, the site's calibration statistics (data-aware builds)."""
    plan = parse_plan(plan)
    by_name, resolved = resolve(model, plan, sites)
    for name, cfg in resolved.items():  # a plan entry that stores more than the dense site is a mistake
        cfg.check_shrinks(by_name[name], freqs)
    model = copy.deepcopy(model)
    shared: dict[str, CompressedWeight] = {}
    for name, cfg in resolved.items():
        site = by_name[name]
        weight = in_place_weight(model, name)  # a standard module's own matrix (nn.LSTM, attention), or None
        weight = weight if weight is not None else dense_weight(model.get_submodule(name))[0]
        weight = weight.float().cpu().contiguous()  # a Conv1D's transposed view: methods may keep it as a parameter
        site_stats = (stats or {}).get(name) or SiteStats(freqs=freqs if site.is_vocab else None)
        built = weight_class(cfg).build(weight, site, cfg, site_stats)
        for p in built.parameters():  # factors sliced from an SVD may be strided views; checkpoints need dense tensors
            if not p.is_contiguous():
                p.data = p.data.contiguous()
        shared[name] = built
    place_compressed(model, by_name, shared)
    return model


def untrained_perplexity(
    dense: nn.Module,
    plan: Mapping[str, Any],
    tokens: torch.Tensor,
    freqs: torch.Tensor | None = None,
    stats: dict[str, SiteStats] | None = None,
    seed: int = 0,
) -> float:
    """The plan's perplexity on `tokens` as `compress` builds it, before any training: the cheap
    proxy by which plans and storage widths are compared (seeded, so a random build is repeatable)."""
    from autoshrink.models.training import evaluate_perplexity

    torch.manual_seed(seed)
    return evaluate_perplexity(compress(dense, plan, freqs=freqs, stats=stats), tokens)


def place_compressed(model: nn.Module, by_name: dict[str, Site], built: dict[str, CompressedWeight]) -> None:
    """Put each compressed weight in its site's place, and in its tie partners' (shared)."""
    for site in by_name.values():
        owner = site.tied_with or site.name
        if owner not in built or place_in_place(model, site.name, built[owner]):
            continue  # not planned, or compressed in place: the module keeps running its own kernel
        module = model.get_submodule(site.name)
        if site.role == "embedding" and isinstance(module, nn.Embedding):
            _set_module(model, site.name, CompressedEmbedding(built[owner]))
        else:
            _set_module(model, site.name, CompressedLinear(built[owner], dense_weight(module)[1]))
