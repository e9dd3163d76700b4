"""Pruning to a target density (Grachev et al. 2017; gradual schedule of Zhu & Gupta 2017): `prune`.

W is kept as a dense parameter with a 0/1 mask of the k = max(1, round(density * m * n))
most salient weights; only the kept values are stored, as a sparse overlay (the cheaper of CSR
and a bitmask, docs/methods.md, byte accounting), quantised to `bits`.

Saliency. Plain: magnitude |W_ij|. Data (docs/methods.md, data-aware initialisation): Wanda's |W_ij| ||X_j|| (the RMS
of input j from the calibration moment), times sqrt(f_i) on vocabulary rows, and every row of a
vocabulary matrix keeps at least half its even share of the weights (ROW_FLOOR_SHARE): without a
floor the rare words' rows empty out (whole-model magnitude pruning at 10x: test ppl 488). On
the LSTM matrices the kept weights then absorb the pruned ones' output error (SparseGPT's OBS
update for the chosen mask, `_gptq.obs_prune`) and the pruned entries are set to 0; not on
vocabulary matrices, where it was measured to hurt (kjv-lstm softmax at 25x, fp32, no
fine-tuning: val ppl 958 with the Wanda mask alone, 2012 with the update; rnn.1.ih: 108 alone,
72 with it).

Right after `build` the mask is already at the target density (one-shot pruning), so an
untrained compressed model is evaluated honestly. During fine-tuning, `on_progress(f)` prunes
gradually with the cubic schedule of Zhu & Gupta:
    density(f) = target + (1 - target) * (1 - min(f / 0.75, 1))^3
so training starts dense and holds the target from f = 0.75 on (after an OBS update "dense" is
the pruned matrix itself, its zeros free to regrow). The mask is recomputed from the current
saliency every 1% of progress (Zhu & Gupta's pruning interval; a top-k of a large matrix is too
slow for every step); pruned weights keep their values (they get no gradient), so one can revive
when kept weights shrink below it. Ties are broken by position, so the count is exact. A state
loaded from mid-ramp is brought back to exactly k by the next on_progress(f >= 0.75).

The forward is a dense masked matmul while training, a cached CSR product in inference where
that is faster (`_sparse.SparseProduct`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.methods import _storage
from autoshrink.methods._base import CompressedWeight, MethodConfig, calibrated, register
from autoshrink.methods._gptq import obs_prune
from autoshrink.methods._linalg import Metric
from autoshrink.methods._sparse import (
    RAMP_END,
    RampClock,
    SparseProduct,
    masked_quantised,
    ramp_mask,
    stored_mask,
    topk_mask,
)

ROW_FLOOR_SHARE = 0.5  # data-aware, vocabulary rows: each keeps at least this share of k / m


@dataclass(frozen=True)
class PruneConfig(MethodConfig):
    method = "prune"
    size_knob = "density"  # stored bytes grow with the number of kept values
    density: float = field(
        default=0.1,
        metadata={
            "help": "fraction of weights kept, in (0, 1], the most salient (|W| or, data-aware, |W| ||X_j||); a cubic "
            "ramp to it during fine-tuning"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_range("density", 0.0, 1.0, low_open=True)

    def nnz(self, shape: tuple[int, int]) -> int:
        m, n = shape
        return max(1, round(self.density * m * n))


@register(PruneConfig)
class PruneWeight(CompressedWeight):
    settles_at = RAMP_END  # the mask reaches its stored density here

    def __init__(self, site, config: PruneConfig, w: torch.Tensor, mask: torch.Tensor, metric: Metric | None = None):
        super().__init__(site, config)
        self.k = config.nnz(site.shape)
        self.w = nn.Parameter(w.detach().clone().float())
        self.register_buffer("mask", mask.bool().clone())
        # The saliency's row and input scales (non-persistent: they follow from build's inputs).
        metric = metric or Metric()
        m, n = site.shape
        self.register_buffer("row_scale", torch.ones(m) if metric.row is None else metric.row.float(), persistent=False)
        norms = metric.input_norms()
        self.register_buffer("col_scale", torch.ones(n) if norms is None else norms.float(), persistent=False)
        self.row_floor = int(ROW_FLOOR_SHARE * self.k / m) if site.is_vocab and not metric.plain else 0
        self._product = SparseProduct()
        self._clock = RampClock()

    @classmethod
    def build(cls, weight, site, config, stats=None):
        config.check_site(site)
        metric = Metric.of(site, calibrated(config, stats))
        w = weight.detach().float()
        module = cls(site, config, w, torch.ones_like(w, dtype=torch.bool), metric)
        mask = topk_mask(module.saliency(), module.k, module.row_floor)
        module.mask.copy_(mask)
        if metric.moment is not None and not site.is_vocab:  # measured: on the softmax the update hurts
            module.w.data.copy_(obs_prune(w, mask, metric.moment))
        return module

    def saliency(self) -> torch.Tensor:
        return self.w.detach().abs() * self.row_scale[:, None] * self.col_scale[None, :]

    def weight(self) -> torch.Tensor:
        return masked_quantised(self, self.w, self.mask)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, self.w, self.mask, self.weight)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.config.bits >= 16:  # elementwise quantisation: gather the rows first, O(len(ids) n)
            return torch.where(self.mask[ids], self.q(self.w[ids]), 0.0)
        return F.embedding(ids, self.weight())

    def on_progress(self, fraction: float) -> None:
        ramp_mask(self.mask, self.saliency(), self.k, fraction, self._clock, 1.0, self.config.density, self.row_floor)

    def export_mask(self) -> torch.Tensor:
        return stored_mask(self.mask, self.saliency(), self.k, self.row_floor)

    @classmethod
    def export_specs(cls, site, config, freqs=None):
        m, n = site.shape
        return _storage.sparse_specs(m, n, config.nnz(site.shape), config.bits, config.group_size)

    def export(self):
        return _storage.pack_sparse(self.w, self.export_mask(), self.config.bits, self.config.group_size)

    @classmethod
    def from_export(cls, tensors, site, config):
        m, n = site.shape
        dense, mask = _storage.unpack_sparse(tensors, m, n, config.bits, config.group_size)
        return cls(site, config, dense, mask)
