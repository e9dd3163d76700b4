"""Site discovery: the compressible sites of any torch module (see autoshrink.sites), and the
sites a plan already compressed (`compressed_sites`, `all_sites`).

Two kinds of site, by where the weight lives:
  - a module site: an nn.Embedding, nn.Linear or GPT-2 Conv1D that a compressed module replaces
    (its name is the module's path: `decoder`, `transformer.h.0.attn.c_attn`);
  - an in-place site: a weight that a standard torch module reads itself inside its fused kernel,
    so the module stays and the weight is rebuilt by the compressed form (plan/parametrize.py).
    These are the matrices of nn.LSTM / nn.GRU / nn.RNN (`rnn.weight_ih_l0`, `rnn.weight_hh_l1_reverse`,
    `rnn.weight_hr_l0` with proj_size; role recurrent), of nn.MultiheadAttention (`attn.in_proj_weight`,
    or `q_proj_weight`/`k_proj_weight`/`v_proj_weight` when the sizes differ, and `attn.out_proj`;
    role attention), and the feed-forward Linears of nn.TransformerEncoderLayer / DecoderLayer
    (`linear1`, `linear2`; role mlp), whose forward reads `.weight` directly.
A site's name follows the module's own parameter names, so a plan reads like the model. Biases
stay plain parameters of the module; a site covers its weight matrix only.
"""

from __future__ import annotations

import dataclasses

from torch import nn
from torch.nn.utils import parametrize

from autoshrink.sites import CompressedModule, Site

# Modules whose forward reads their child Linears' `.weight` instead of calling them: a child
# Linear of these is compressed in place, never replaced.
_READS_CHILD_WEIGHTS = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _linear_like(module: nn.Module) -> tuple[int, int] | None:
    """(out, in) of a Linear or a GPT-2 Conv1D (whose weight is stored in x out)."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):
        w = module.weight
        return int(w.shape[1]), int(w.shape[0])
    return None


def recurrent_weight_names(module: nn.RNNBase) -> list[str]:
    """The matrices of an nn.LSTM / nn.GRU / nn.RNN in torch's own order (per layer and direction:
    weight_ih, weight_hh, weight_hr with proj_size)."""
    return [n for n in module._flat_weights_names if n.startswith("weight_")]


def attention_weight_names(module: nn.MultiheadAttention) -> list[str]:
    """The input projections of an nn.MultiheadAttention: one fused matrix, or q/k/v when separate."""
    return ["in_proj_weight"] if module._qkv_same_embed_dim else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]


def in_place_target(model: nn.Module, site_name: str) -> tuple[nn.Module, str] | None:
    """(module, tensor name) of a site compressed in place, or None for a module site."""
    parent_name, _, leaf = site_name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        return None
    if isinstance(parent, nn.RNNBase) and leaf in parent._flat_weights_names:
        return parent, leaf
    if isinstance(parent, nn.MultiheadAttention) and leaf in attention_weight_names(parent):
        return parent, leaf
    if isinstance(parent, _READS_CHILD_WEIGHTS) and isinstance(getattr(parent, leaf, None), nn.Linear):
        return getattr(parent, leaf), "weight"
    return None


def discover_sites(model: nn.Module, vocab_size: int | None = None) -> list[Site]:
    """Sites of any torch module.

    A model may describe its own sites through `autoshrink_sites()` (the reference LSTM does, to
    mark its recurrent matrices). Otherwise: every nn.Embedding is an embedding site; a
    Linear/Conv1D whose output size is the vocabulary size (that of the largest embedding when
    not given) is a softmax site; the matrices of standard recurrent and attention modules are
    in-place sites (module docstring); other Linear/Conv1D are linear sites. Weights shared
    between modules are reported as ties.
    """
    if hasattr(model, "autoshrink_sites"):
        return list(model.autoshrink_sites())
    return module_sites(model, vocab_size)


def _in_place_sites(name: str, module: nn.Module) -> list[tuple[str, str, nn.Parameter]]:
    """(site name, role, weight) of the standard-module matrices that `module` owns itself."""
    if isinstance(module, nn.RNNBase):
        names, role = recurrent_weight_names(module), "recurrent"
    elif isinstance(module, nn.MultiheadAttention):
        names, role = attention_weight_names(module), "attention"
    else:
        return []
    return [(f"{name}.{n}", role, getattr(module, n)) for n in names if not parametrize.is_parametrized(module, n)]


def _child_role(parent: nn.Module | None) -> str | None:
    """The role of a Linear that a standard transformer module reads in place (None otherwise)."""
    if isinstance(parent, nn.MultiheadAttention):
        return "attention"
    if isinstance(parent, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return "mlp"
    return None


def module_sites(model: nn.Module, vocab_size: int | None = None) -> list[Site]:
    """The generic discovery of `discover_sites` (models with their own `autoshrink_sites` refine it)."""
    embeddings = {n: m for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    if vocab_size is None and embeddings:
        vocab_size = max(m.num_embeddings for m in embeddings.values())
    sites: list[Site] = []
    owner_of_weight: dict[int, str] = {}

    def add(name: str, role: str, shape, weight, bias: bool) -> None:
        tied = owner_of_weight.get(id(weight))
        owner_of_weight.setdefault(id(weight), name)
        sites.append(Site(name=name, role=role, shape=(int(shape[0]), int(shape[1])), bias=bias, tied_with=tied))

    modules = dict(model.named_modules(remove_duplicate=False))
    for name, module in model.named_modules(remove_duplicate=False):
        if not name:
            continue
        parent = modules.get(name.rpartition(".")[0])
        if isinstance(module, nn.Embedding):
            add(name, "embedding", (module.num_embeddings, module.embedding_dim), module.weight, False)
        elif isinstance(module, CompressedModule):
            continue  # already compressed: not a site any more
        elif (role := _child_role(parent)) is not None and isinstance(module, nn.Linear):
            if not parametrize.is_parametrized(module, "weight"):
                add(name, role, (module.out_features, module.in_features), module.weight, False)  # bias stays plain
        elif (dims := _linear_like(module)) is not None:
            role = "softmax" if vocab_size is not None and dims[0] == vocab_size else "linear"
            add(name, role, dims, module.weight, getattr(module, "bias", None) is not None)
        else:
            for site_name, role, weight in _in_place_sites(name, module):
                add(site_name, role, weight.shape, weight, False)
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
        if ".parametrizations." in name:  # an in-place site (plan/parametrize.py): named as the plan named it
            name = module.site.name
        owner = owner_of_storage.setdefault(id(module.storage), name)
        out.append(
            dataclasses.replace(
                module.site,
                name=name,
                tied_with=None if owner == name else owner,
                method=module.method,
                stored_bytes=module.stored_bytes(),
            )
        )
    return out


def all_sites(model: nn.Module) -> list[Site]:
    """Every site of a model, dense or compressed, in the model's module order."""
    order = {name: k for k, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}
    found = discover_sites(model) + compressed_sites(model)

    def position(site: Site) -> int:  # an in-place site (`rnn.weight_ih_l0`) sits at its module
        return order.get(site.name, order.get(site.name.rpartition(".")[0], len(order)))

    return sorted(found, key=position)  # stable: a module's in-place sites keep their own order
