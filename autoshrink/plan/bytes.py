"""Stored bytes of plans (analytic, before building) and of built models: the numbers a budget bounds."""

from __future__ import annotations

import torch
from torch import nn

from autoshrink.methods import CompressedWeight, MethodConfig, weight_class
from autoshrink.plan.apply import Plan
from autoshrink.sites import Site


def method_bytes(site: Site, cfg: MethodConfig, freqs: torch.Tensor | None = None) -> int:
    """Analytic stored bytes of one site's weight under `cfg` (bias excluded)."""
    return weight_class(cfg).stored_bytes(site, cfg, freqs if site.is_vocab else None)


def plan_stored_bytes(
    sites: list[Site], plan: Plan, freqs: torch.Tensor | None = None, model_bytes: int | None = None
) -> int:
    """Stored bytes of the whole model under `plan`, without building it.

    `model_bytes` is the dense model's stored bytes (every parameter, shared ones once); the
    plan replaces its sites' weights (and biases, for methods that model the output
    themselves). Without it, the model is taken to be its sites (true for the built-in LSTM,
    whose every parameter is a site weight or bias).
    """
    if model_bytes is None:
        model_bytes = sum(s.dense_bytes for s in sites if s.tied_with is None)
    by_name = {s.name: s for s in sites}
    owned = {(by_name[name].tied_with if name in by_name else None) or name: cfg for name, cfg in plan.items()}
    total = model_bytes
    for site in sites:
        if site.tied_with is not None or site.name not in owned:
            continue  # a tied partner's entry is its owner's (compress does the same)
        cfg = owned[site.name]
        kept_bias = 4 * site.shape[0] if site.bias and weight_class(cfg).uses_site_bias else 0
        total += method_bytes(site, cfg, freqs) + kept_bias - site.dense_bytes
    return total


def stored_bytes(model: nn.Module) -> int:
    """Stored bytes of a (compressed or dense) model: each compressed weight by its method,
    every other tensor at its dtype; shared tensors and shared compressed weights count once."""
    total = 0
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, CompressedWeight) and id(module) not in seen:
            seen.add(id(module))
            total += module.nbytes()
            seen.update(id(p) for p in module.parameters())
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def dense_bytes(model: nn.Module) -> int:
    """fp32 bytes of every parameter of the dense model (shared ones once): the ratio's numerator."""
    return 4 * sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
