"""The modules that put a CompressedWeight in a site's place (CompressedLinear for a Linear,
CompressedEmbedding for an Embedding); tied sites share one CompressedWeight, so it trains and
counts once."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from autoshrink.methods._base import CompressedWeight
from autoshrink.sites import CompressedModule, Site


class CompressedStandIn(CompressedModule):
    """What site discovery asks of a compressed site (autoshrink.sites.CompressedModule), answered
    from the CompressedWeight in `self.compressed`."""

    compressed: CompressedWeight

    @property
    def site(self) -> Site:
        return self.compressed.site

    @property
    def method(self) -> str:
        return self.compressed.config.method

    @property
    def storage(self) -> nn.Module:
        return self.compressed

    def stored_bytes(self) -> int:
        bias = getattr(self, "bias", None)
        return self.compressed.nbytes() + (bias.numel() * bias.element_size() if bias is not None else 0)


class CompressedLinear(CompressedStandIn):
    """A compressed weight used as y = W x + b in a Linear's place."""

    def __init__(self, weight: CompressedWeight, bias: torch.Tensor | None):
        super().__init__()
        self.compressed = weight
        use_bias = bias is not None and weight.uses_site_bias
        self.bias = nn.Parameter(bias.detach().clone().float()) if use_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.compressed.matmul(x)
        return y + self.bias if self.bias is not None else y

    # A user's forward may read the sizes of the Linear it replaced (`self.decoder.out_features`).
    @property
    def out_features(self) -> int:
        return self.compressed.site.shape[0]

    @property
    def in_features(self) -> int:
        return self.compressed.site.shape[1]

    def dense_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) for a whole sequence: what a recurrent layer feeds its fused kernel."""
        w = self.compressed.sequence_weight()
        return w, self.bias if self.bias is not None else w.new_zeros(w.shape[0])

    def timed_call(self, x: torch.Tensor) -> Callable[[], object]:
        """What one forward pass of the model costs at this site (latency tables time it): a
        recurrent matrix is built once per sequence and multiplied inside the fused kernel, as
        the dense one is, so only building it costs; any other site multiplies its input."""
        if self.compressed.site.role == "recurrent":
            return self.dense_parameters
        return lambda: self(x)


class CompressedEmbedding(CompressedStandIn):
    """A compressed weight used as a word-vector table in an Embedding's place."""

    def __init__(self, weight: CompressedWeight):
        super().__init__()
        self.compressed = weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.compressed.lookup(ids)

    # A user's forward may read the sizes of the Embedding it replaced.
    @property
    def num_embeddings(self) -> int:
        return self.compressed.site.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.compressed.site.shape[1]
