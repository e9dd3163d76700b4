"""Site discovery: the compressible sites of any torch module (see autoshrink.sites), and the
sites a plan already compressed (`compressed_sites`, `all_sites`)."""
from __future__ import annotations

import dataclasses

from torch import nn

from autoshrink.sites import CompressedModule, Site


def _linear_like(module: nn.Module) -> tuple[int, int] | None:
    """(out, in) of a Linear or a GPT-2 Conv1D (whose weight is stored in x out)."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        w = module.weight
        return int(w.shape[1]), int(w.shape[0])
    return None


def discover_sites(model: nn.Module, vocab_size: int | None = None) -> list[Site]:
    """Sites of any torch module.

    A model may describe its own sites through `autoshrink_sites()` (the reference LSTM does, to
    mark its recurrent matrices). Otherwise: every nn.Embedding is an embedding site; a
    Linear/Conv1D whose output size is the vocabulary size (that of the largest embedding when
    not given) is a softmax site; other Linear/Conv1D are linear sites. Weights shared between
    modules are reported as ties.
    """
    if hasattr(model, "autoshrink_sites"):
        return list(model.autoshrink_sites())
    return module_sites(model, vocab_size)


def module_sites(model: nn.Module, vocab_size: int | None = None) -> list[Site]:
    """The generic discovery of `discover_sites` (models with their own `autoshrink_sites` refine it)."""
    embeddings = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    if vocab_size is None and embeddings:
        vocab_size = max(m.num_embeddings for m in embeddings.values())
    sites: list[Site] = []
    owner_of_weight: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if not name:
            continue
        if isinstance(module, nn.Embedding):
            shape, role, weight, bias = (module.num_embeddings, module.embedding_dim), "embedding", module.weight, False
        elif isinstance(module, CompressedModule):
            continue  # already compressed: not a site any more
        elif (dims := _linear_like(module)) is not None:
            role = "softmax" if vocab_size is not None and dims[0] == vocab_size else "linear"
            shape, weight, bias = dims, module.weight, getattr(module, "bias", None) is not None
        else:
            continue
        tied = owner_of_weight.get(id(weight))
        owner_of_weight.setdefault(id(weight), name)
        sites.append(Site(name=name, role=role, shape=(int(shape[0]), int(shape[1])), bias=bias, tied_with=tied))
    return sites


def compressed_sites(model: nn.Module) -> list[Site]:
    """The sites a plan already compressed, each with its method and stored bytes (what the
    compressed module says of itself: autoshrink.sites.CompressedModule). A site sharing its
    stored tensors with an earlier one is marked tied to it."""
    out: list[Site] = []
    owner_of_storage: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, CompressedModule):
            continue
        owner = owner_of_storage.setdefault(id(module.storage), name)
        out.append(dataclasses.replace(module.site, name=name, tied_with=None if owner == name else owner,
                                       method=module.method, stored_bytes=module.stored_bytes()))
    return out


def all_sites(model: nn.Module) -> list[Site]:
    """Every site of a model, dense or compressed, in the model's module order."""
    order = {name: k for k, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}
    found = discover_sites(model) + compressed_sites(model)
    return sorted(found, key=lambda s: order.get(s.name, len(order)))
