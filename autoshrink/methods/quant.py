"""k-bit quantisation of a dense matrix (Grachev et al. 2017): the `quant` method.

Every weight is stored as an affine min-max code per row (or per group of `group_size`
values): 256 levels at 8 bits, as Grachev did per tensor. Below 6 bits the codes need
fine-tuning with the straight-through estimator, which `q()` provides. The same storage is
what every other method's `bits` knob applies to its own tensors.
Init, plain: round to nearest. Init, data: GPTQ (`_gptq.gptq`) where the matrix multiplies
calibrated inputs (LSTM and softmax matrices): columns rounded one at a time, each error pushed
onto the columns not yet rounded through H^-1. An embedding's rows are looked up one at a time,
so no error can be traded between them: it stays round-to-nearest (which is also the
frequency-weighted optimum per row on a fixed grid).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from autoshrink.methods._base import CompressedWeight, MethodConfig, calibrated, register
from autoshrink.methods._gptq import gptq
from autoshrink.methods._linalg import Metric
from autoshrink.sites import Site


@dataclass(frozen=True)
class QuantConfig(MethodConfig):
    method = "quant"
    size_knob = "bits"
    bits: int = field(default=8, metadata={"help": "bits per weight: 2-8 (affine codes), 16 (fp16) or 32"})


@register(QuantConfig)
class QuantWeight(CompressedWeight):
    def __init__(self, site: Site, config: QuantConfig, w: torch.Tensor):
        super().__init__(site, config)
        self.w = nn.Parameter(w.detach().clone().float())

    @classmethod
    def build(cls, weight, site, config, stats=None):
        config.check_site(site)
        moment = Metric.of(site, calibrated(config, stats)).moment
        if moment is not None and config.bits < 16:
            weight = gptq(weight, moment, config.bits, config.group_size)
        return cls(site, config, weight)

    def weight(self) -> torch.Tensor:
        return self.q(self.w)

    @classmethod
    def export_specs(cls, site, config, freqs=None):
        return cls.float_specs("w", site.shape, config)

    def export(self):
        return self.pack("w", self.w)

    @classmethod
    def from_export(cls, tensors, site, config):
        return cls(site, config, cls.unpack(tensors, "w", site.shape, config))
