"""Stored bytes of plans (analytic, before building) and of built models: the numbers a budget bounds.

What a user holds is model.safetensors (final/export.py writes it), and its size on disk, header
included, is a model's stored bytes. The file holds

    <site>.<name>   each compressed weight's export() tensors under the site that owns it (tied
                    sites share one weight, stored once)
    <parameter>     every other parameter under its own name, at its own dtype (a shared one once,
                    under its first name)

after a JSON header that names each tensor with its dtype, shape and offsets (FILE_METADATA
too). Both counts below describe those tensors by name, dtype and shape (`Specs`) without making
them, a plan's from its methods' `export_specs`, a built model's from its modules, and size the
file with `safetensors_header_bytes`: so the analytic count of a plan, the count of the
model built from it and os.path.getsize of its export are one number.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autoshrink.methods import (
    CompressedWeight,
    MethodConfig,
    Specs,
    prefixed,
    safetensors_header_bound,
    safetensors_header_bytes,
    specs_bytes,
    weight_class,
)
from autoshrink.models.discover import discover_sites, in_place_target
from autoshrink.plan.apply import Plan
from autoshrink.sites import Site

EXPORT_FORMAT = "autoshrink-compressed/1"
FILE_METADATA = {"format": EXPORT_FORMAT}  # the safetensors metadata of every export


def method_bytes(site: Site, cfg: MethodConfig, freqs: torch.Tensor | None = None) -> int:
    """Analytic bytes of one site's stored tensors under `cfg` (bias and file header excluded)."""
    return weight_class(cfg).stored_bytes(site, cfg, freqs if site.is_vocab else None)


# --- the file of a built model -----------------------------------------------------------
def compressed_weights(model: nn.Module) -> dict[str, CompressedWeight]:
    """Each distinct compressed weight by the site that owns it (tied sites share one)."""
    out: dict[str, CompressedWeight] = {}
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, CompressedWeight) and id(module) not in seen:
            seen.add(id(module))
            out[module.site.name] = module
    return out


def plain_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters outside compressed weights, by name; a shared one under its first name."""
    inside = {id(p) for w in compressed_weights(model).values() for p in w.parameters()}
    return {name: p for name, p in model.named_parameters() if id(p) not in inside}


def model_specs(model: nn.Module) -> Specs:
    """The tensors of `model`'s model.safetensors: export name -> (dtype, shape)."""
    specs: Specs = {}
    for site, weight in compressed_weights(model).items():
        specs.update(prefixed(site, weight.tensor_specs()))
    for name, p in plain_parameters(model).items():
        if name in specs:
            raise RuntimeError(f"export key {name!r} is both a compressed tensor and a parameter")
        specs[name] = (p.dtype, tuple(p.shape))
    return specs


def file_bytes_of(specs: Specs) -> int:
    """Size on disk of a model.safetensors holding `specs`: header and tensors."""
    return safetensors_header_bytes(specs, FILE_METADATA) + specs_bytes(specs)


def stored_bytes(model: nn.Module) -> int:
    """Stored bytes of a (compressed or dense) model: the size of its model.safetensors, header
    included; each compressed weight as its method stores it, every other tensor at its dtype,
    shared tensors and shared compressed weights once."""
    return file_bytes_of(model_specs(model))


def dense_bytes(model: nn.Module) -> int:
    """fp32 bytes of every parameter of the dense model (shared ones once): the ratio's numerator."""
    return 4 * sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# --- the file of a plan, before building -------------------------------------------------
@dataclass(frozen=True)
class ModelFile:
    """The file of the model a plan is applied to: its tensors (export name -> (dtype, shape)) and
    the name of each site's dense weight among them, which a plan replaces."""

    specs: Specs
    site_weights: dict[str, str]

    @property
    def bytes(self) -> int:
        return file_bytes_of(self.specs)

    @classmethod
    def of(cls, model: nn.Module, sites: list[Site] | None = None) -> "ModelFile":
        """The file of `model` (dense, or with sites compressed already) and its dense sites' weights."""
        sites = discover_sites(model) if sites is None else sites
        plain = plain_parameters(model)
        name_of = {id(p): name for name, p in reversed(plain.items())}  # a shared tensor: its first name
        weights = {}
        for site in sites:
            target = in_place_target(model, site.name)
            tensor = getattr(*target) if target is not None else model.get_submodule(site.name).weight
            weights[site.name] = name_of[id(tensor)]
        return cls(model_specs(model), weights)

    @classmethod
    def of_sites(cls, sites: list[Site]) -> "ModelFile":
        """A model that is its sites and nothing else (the built-in LSTM): `<site>.weight` and
        `<site>.bias` in fp32, a tied weight once under its owner."""
        specs: Specs = {}
        weights = {}
        for site in sites:
            weights[site.name] = f"{site.tied_with or site.name}.weight"
            if site.tied_with is None:
                specs[weights[site.name]] = (torch.float32, tuple(site.shape))
            if site.bias:
                specs[f"{site.name}.bias"] = (torch.float32, (site.shape[0],))
        return cls(specs, weights)


def plan_specs(
    sites: list[Site], plan: Plan, freqs: torch.Tensor | None = None, model: ModelFile | None = None
) -> Specs:
    """The tensors of the export of `model` compressed by `plan`, as `compress` builds it: each
    planned site's dense weight replaced by its method's tensors under the owner's name, a site
    bias kept in fp32 beside them (or dropped, for methods that model the output themselves).
    `model` None: the model is taken to be its sites (`ModelFile.of_sites`)."""
    model = model if model is not None else ModelFile.of_sites(sites)
    by_name = {s.name: s for s in sites}
    owned = {(by_name[name].tied_with if name in by_name else None) or name: cfg for name, cfg in plan.items()}
    specs = dict(model.specs)
    for site in sites:
        owner = site.tied_with or site.name
        if owner not in owned:
            continue
        cfg = owned[owner]
        method = weight_class(cfg)
        specs.pop(model.site_weights[site.name], None)  # a tied partner's weight is its owner's
        if site.bias:
            bias = f"{site.name}.bias"
            if method.keeps_site_bias(by_name[owner]):
                specs[bias] = (torch.float32, (site.shape[0],))  # CompressedLinear keeps it in fp32
            else:
                specs.pop(bias, None)
        if site.tied_with is None:
            specs.update(prefixed(site.name, method.export_specs(site, cfg, freqs if site.is_vocab else None)))
    return specs


def plan_stored_bytes(
    sites: list[Site], plan: Plan, freqs: torch.Tensor | None = None, model_file: ModelFile | None = None
) -> int:
    """Stored bytes of the whole model under `plan`, without building it: the size of the export's
    model.safetensors, header included (the one count every budget decision uses).

    `model_file` is the file of the model the plan applies to (`ModelFile.of(model)`: every
    parameter, shared ones once); None: the model is taken to be its sites.
    """
    return file_bytes_of(plan_specs(sites, plan, freqs, model_file))


def plan_bytes_bound(
    sites: list[Site], plan: Plan, freqs: torch.Tensor | None = None, model_file: ModelFile | None = None
) -> int:
    """An upper bound of plan_stored_bytes that adds up over the tensors, hence over the sites (a
    knapsack sums per-site costs; the exact header is not quite additive: its padding and the
    digits of every offset move with the other tensors). Valid for plans whose tensors hold
    fewer bytes than 10x the model's (offsets of as many digits)."""
    model_file = model_file if model_file is not None else ModelFile.of_sites(sites)
    specs = plan_specs(sites, plan, freqs, model_file)
    digits = len(str(specs_bytes(model_file.specs))) + 1
    return specs_bytes(specs) + safetensors_header_bound(specs, FILE_METADATA, digits)
