"""Compressible sites: the weight matrices a plan may replace, with role, shape and tie partner.

A site is a module in the model (an nn.Embedding, nn.Linear, a Hugging Face Conv1D, or an
already compressed module) named by its fully qualified name, so a plan's keys are module
paths. Roles: embedding (word table), softmax (output layer over the vocabulary), recurrent
(an LSTM's input-to-hidden or hidden-to-hidden matrix), attention (a transformer's query, key,
value or output projection), mlp (a transformer's feed-forward matrices), linear (any other matrix).
"""

from __future__ import annotations

import abc

from dataclasses import dataclass

import torch
from torch import nn

ROLES = ("embedding", "softmax", "recurrent", "attention", "mlp", "linear")
VOCAB_ROLES = ("embedding", "softmax")


@dataclass(frozen=True)
class Site:
    name: str
    role: str
    shape: tuple[int, int]  # (out, in) of y = W x; (words, dim) for embedding and softmax
    bias: bool = False
    tied_with: str | None = None  # another site sharing this weight; compressed and counted once
    method: str | None = None  # the method of a site found already compressed (models/discover.py); None: dense
    stored_bytes: int | None = None  # what such a site stores (weight and bias), exactly

    @property
    def dense_bytes(self) -> int:
        """fp32 bytes of the weight (and bias) as the dense model stores it."""
        m, n = self.shape
        return 4 * (m * n + (m if self.bias else 0))

    @property
    def is_vocab(self) -> bool:
        return self.role in VOCAB_ROLES


@dataclass(frozen=True)
class SiteStats:
    """What one calibration pass learned about a site (docs/methods.md, data-aware initialisation; autoshrink.calibrate).

    moment: the second moment that weighs the matrix's columns (n x n, float64): of its inputs,
    H = X^T X / tokens, for a matrix that multiplies them; of the loss gradient at its output
    vectors for an embedding (whose input is one word). None: not calibrated.
    tokens: how many rows the moment averages.
    freqs: training-split word counts (V,) for vocabulary sites, else None.
    mean: the mean input (n,) of a matrix that multiplies inputs, else None.
    grad_sq: E[g_i^2], the loss gradient's second moment at each output row (m,), else None.
    grad_moment: E[g g^T] (m x m) where the matrix has few enough outputs to keep it, else None.
    """

    moment: torch.Tensor | None = None
    tokens: int = 0
    freqs: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    grad_sq: torch.Tensor | None = None
    grad_moment: torch.Tensor | None = None


class CompressedModule(nn.Module, abc.ABC):
    """Base of the modules that stand in a compressed site's place (the methods define them):
    site discovery knows a compressed site by this type, without knowing any method. What it
    lists of one, each subclass answers; a subclass that misses a part cannot be instantiated."""

    @property
    @abc.abstractmethod
    def site(self) -> Site:
        """The site as it was compressed (its name under the plan; role, shape and bias of the dense weight)."""

    @property
    @abc.abstractmethod
    def method(self) -> str:
        """The name of the method that compressed it."""

    @property
    @abc.abstractmethod
    def storage(self) -> nn.Module:
        """The module that holds the stored tensors: tied sites share one, so it counts once."""

    @abc.abstractmethod
    def stored_bytes(self) -> int:
        """Exact bytes the site stores (its share of model.safetensors)."""
