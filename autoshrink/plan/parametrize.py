"""Compression in place: a standard torch module keeps running its own fused kernel on a weight that
the compressed form builds.

nn.LSTM / nn.GRU / nn.RNN, nn.MultiheadAttention and the torch transformer layers read their
matrices themselves (models/discover.py, in-place sites), so a compressed module cannot replace
them. Instead `torch.nn.utils.parametrize` turns the weight into a property: reading
`lstm.weight_ih_l0` calls `CompressedParameter.forward`, which returns the CompressedWeight's
`sequence_weight()` (built once per forward pass, and kept in inference until a tensor of the
compressed form changes). The dense tensor is dropped (`right_inverse` returns no tensor), so the
module holds only the compressed tensors and its biases, which stay plain parameters.

nn.RNNBase keeps the weights it last read in `_flat_weights` and refreshes them when a read
returns another tensor (`_update_flat_weights`, at every forward), so a rebuilt weight reaches the
fused kernel; on a GPU, `flatten_parameters` then packs them for cuDNN as it does for dense ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoshrink.methods import CompressedStandIn, CompressedWeight
from autoshrink.models.discover import in_place_target


class CompressedParameter(CompressedStandIn):
    """A parametrization whose value is a compressed weight, W (m x n) as the module stores it."""

    def __init__(self, weight: CompressedWeight):
        super().__init__()
        self.compressed = weight

    def right_inverse(self, dense: torch.Tensor) -> tuple:
        return ()  # keep no dense copy: the compressed tensors are the parameters

    def forward(self) -> torch.Tensor:
        return self.compressed.sequence_weight()

    def timed_call(self, x: torch.Tensor):
        """What a forward pass costs at this site (latency tables): building W, as for a recurrent matrix."""
        return self.forward


def in_place_weight(model: nn.Module, site_name: str) -> torch.Tensor | None:
    """The dense weight (m x n) of an in-place site, or None for a module site."""
    target = in_place_target(model, site_name)
    return getattr(*target).detach() if target is not None else None


def place_in_place(model: nn.Module, site_name: str, weight: CompressedWeight) -> bool:
    """Parametrize an in-place site's weight with `weight`; False for a module site (left to the caller)."""
    target = in_place_target(model, site_name)
    if target is None:
        return False
    module, tensor_name = target
    dense = getattr(module, tensor_name)
    weight.to(device=dense.device)
    # unsafe: the check would build W once more only to compare its shape, which the method keeps.
    parametrize.register_parametrization(module, tensor_name, CompressedParameter(weight), unsafe=True)
    if isinstance(module, nn.RNNBase):
        _deepcopy_without_graph(type(module))
        module._init_flat_weights()
    return True


def _deepcopy_without_graph(cls: type) -> None:
    """Let a parametrized RNN be deep-copied after a training forward: its `_flat_weights` then hold
    the weights built with autograd history, which deepcopy refuses. They are dropped from the
    copy's source (the next forward reads them afresh: `_update_flat_weights`)."""
    if cls.__dict__.get("_autoshrink_deepcopy"):
        return
    copy_module = cls.__deepcopy__  # parametrize's own, on the class it made for this module

    def deepcopy(self, memo):
        self._flat_weights = [w if w is None or w.grad_fn is None else None for w in self._flat_weights]
        return copy_module(self, memo)

    cls.__deepcopy__ = deepcopy
    cls._autoshrink_deepcopy = True
