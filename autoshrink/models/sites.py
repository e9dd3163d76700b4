"""Compressible sites: the weight matrices a plan may replace, with role, shape and tie partner.

A site is a module in the model (an nn.Embedding, nn.Linear, a Hugging Face Conv1D, or an
already compressed module) named by its fully qualified name, so a plan's keys are module
paths. Roles: embedding (word table), softmax (output layer over the vocabulary), recurrent
(an LSTM's input-to-hidden or hidden-to-hidden matrix), attention (a transformer's query, key,
value or output projection), mlp (a transformer's feed-forward matrices), linear (any other matrix).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

ROLES = ("embedding", "softmax", "recurrent", "attention", "mlp", "linear")


@dataclass(frozen=True)
class Site:
    name: str
    role: str
    shape: tuple[int, int]  # (out, in) of y = W x; (words, dim) for embedding and softmax
    bias: bool = False
    tied_with: str | None = None  # another site sharing this weight; compressed and counted once

    @property
    def dense_bytes(self) -> int:
        """fp32 bytes of the weight (and bias) as the dense model stores it."""
        m, n = self.shape
        return 4 * (m * n + (m if self.bias else 0))

    @property
    def is_vocab(self) -> bool:
        return self.role in ("embedding", "softmax")


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
    from autoshrink.methods._base import CompressedEmbedding, CompressedLinear

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
        elif isinstance(module, (CompressedLinear, CompressedEmbedding)):
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
