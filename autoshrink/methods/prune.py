"""Magnitude pruning to a target density (Grachev et al. 2017; gradual schedule of Zhu & Gupta 2017).

W is kept as a dense parameter with a 0/1 mask of the k = max(1, round(density * m * n))
largest-magnitude weights; only the kept values are stored, as a sparse overlay (the cheaper of
CSR and a bitmask, docs/methods.md), quantised to `bits`.

Right after `build` the mask is already at the target density (one-shot pruning), so an
untrained compressed model is evaluated honestly. During fine-tuning, `on_progress(f)` prunes
gradually with the cubic schedule of Zhu & Gupta:
    density(f) = target + (1 - target) * (1 - min(f / 0.75, 1))^3
so training starts dense and holds the target from f = 0.75 on. The mask is recomputed from the
current magnitudes every 1% of progress (Zhu & Gupta's pruning interval; a top-k of a large matrix
is too slow for every step); pruned weights keep their values (they get no gradient), so one can
revive when kept weights shrink below it. Ties are broken by position, so the count is exact.
A state loaded from mid-ramp is brought back to exactly k by the next on_progress(f >= 0.75).

The forward is a dense masked matmul while training. Grachev notes that sparse inference is
slow; on CPU we measured torch's CSR product faster than dense only below about 10% density
(1024x256 and 2600x1300, batch 350), so evaluation without gradients uses a cached CSR copy
there and the dense product otherwise.

The helpers here (cubic_density, topk_mask, masked_quantised, SparseProduct) are shared with the
doping overlay of `kronecker`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.errors import UserError
from autoshrink.methods import _storage
from autoshrink.methods._base import CompressedWeight, MethodConfig, register

RAMP_END = 0.75  # fraction of fine-tuning at which the target density is reached and held
CSR_MAX_DENSITY = 0.1  # measured CPU crossover of CSR vs dense products (see module docstring)
MASK_STEP = 0.01  # recompute the mask each 1% of fine-tuning during the ramp (Zhu & Gupta's delta t)


def cubic_density(fraction: float, start: float, target: float, end: float = RAMP_END) -> float:
    """Zhu & Gupta: from `start` at fraction 0 to `target` at `end`, cubic, then held."""
    ramp = min(max(fraction, 0.0) / end, 1.0)
    return target + (start - target) * (1.0 - ramp) ** 3


def topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of exactly k largest entries of `score`; ties go to the earlier (row-major) entry."""
    flat = score.detach().reshape(-1)
    total = flat.numel()
    if k >= total:
        return torch.ones_like(score, dtype=torch.bool)
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    threshold = flat.kthvalue(total - k + 1).values  # the k-th largest; O(numel), no full sort
    keep = flat > threshold
    need = k - int(keep.count_nonzero())
    if need > 0:
        ties = (flat == threshold).nonzero().squeeze(1)[:need]
        keep[ties] = True
    return keep.reshape(score.shape)


def masked_quantised(module: CompressedWeight, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The overlay as stored: `values` where `mask`, zero elsewhere, quantised like pack_sparse.

    pack_sparse stores values[mask] as one 1-D tensor (row-major), so below 16 bits the scales
    are taken over that vector, not over rows of the m x n matrix.
    """
    if module.config.bits >= 16:  # elementwise rounding: same result on the matrix as on the vector
        return torch.where(mask, module.q(values), values.new_zeros(()))
    return values.new_zeros(values.shape).masked_scatter(mask, module.q(values[mask]))


class RampClock:
    """When to recompute a magnitude mask: every MASK_STEP of progress during the ramp, once when
    it ends (then the target mask is held), and again whenever progress restarts (a new run).
    A top-k over a 10000 x 650 matrix costs ~0.1 s on CPU, too much for every step."""

    def __init__(self):
        self.last: float | None = None

    def due(self, fraction: float) -> bool:
        last = self.last
        if last is not None and fraction >= last:
            if last >= RAMP_END:
                return False
            if fraction < RAMP_END and fraction - last < MASK_STEP:
                return False
        self.last = fraction
        return True


@torch.no_grad()
def ramp_mask(mask: torch.Tensor, score: torch.Tensor, k: int, fraction: float, clock: "RampClock",
              start: float, target: float) -> None:
    """Set `mask` in place to the largest entries of `score`, as many as the cubic schedule from
    density `start` to `target` allows at `fraction`, and exactly k from RAMP_END on. After the
    ramp the mask is held, unless a mid-ramp state was loaded (its count is then not k)."""
    if not clock.due(fraction) and not (fraction >= RAMP_END and int(mask.count_nonzero()) != k):
        return
    m, n = mask.shape
    count = k if fraction >= RAMP_END else max(k, round(cubic_density(fraction, start, target) * m * n))
    mask.copy_(topk_mask(score, count))


def stored_mask(mask: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """The mask at the stored density: the current one after the ramp (or before it started),
    else what the end of the ramp would keep."""
    return mask if int(mask.count_nonzero()) == k else topk_mask(score, k)


class SparseProduct:
    """x @ S^T for a masked overlay: dense while training, a cached CSR product for inference.

    The cache is keyed on the versions of the values and the mask (optimizer steps, on_progress
    and load_state_dict all bump them), so it never serves stale weights.
    """

    def __init__(self):
        self._key = None
        self._csr = None  # None: the dense product is the faster one

    def __getstate__(self):  # copies and pickles start without the cache (CSR tensors cannot be copied)
        return {"_key": None, "_csr": None}

    def __call__(self, x: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, dense_fn) -> torch.Tensor:
        if values.device.type != "cpu" or (torch.is_grad_enabled() and values.requires_grad):
            self._key = self._csr = None
            return F.linear(x, dense_fn())
        key = (values._version, mask._version, values.data_ptr(), mask.data_ptr())
        if key != self._key:
            sparse_enough = int(mask.count_nonzero()) <= CSR_MAX_DENSITY * mask.numel()
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                self._csr = dense_fn().detach().to_sparse_csr() if sparse_enough else None
            self._key = key
        if self._csr is None:
            return F.linear(x, dense_fn())
        x2 = x.reshape(-1, x.shape[-1]).to(self._csr.dtype)
        return (self._csr @ x2.T.contiguous()).T.reshape(*x.shape[:-1], -1)


@dataclass(frozen=True)
class PruneConfig(MethodConfig):
    method = "prune"
    size_knob = "density"  # stored bytes grow with the number of kept values
    density: float = field(default=0.1, metadata={"help": "fraction of weights kept, in (0, 1]; gradual cubic ramp to it during fine-tuning"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.density <= 1.0:
            raise UserError(f"prune: density must be in (0, 1], got {self.density!r}")

    def nnz(self, shape: tuple[int, int]) -> int:
        m, n = shape
        return max(1, round(self.density * m * n))


@register(PruneConfig)
class PruneWeight(CompressedWeight):
    settles_at = RAMP_END  # the mask reaches its stored density here
    def __init__(self, site, config: PruneConfig, w: torch.Tensor, mask: torch.Tensor):
        super().__init__(site, config)
        self.k = config.nnz(site.shape)
        self.w = nn.Parameter(w.detach().clone().float())
        self.register_buffer("mask", mask.bool().clone())
        self._product = SparseProduct()
        self._clock = RampClock()

    @classmethod
    def build(cls, weight, site, config, freqs=None):
        config.check_site(site)
        w = weight.detach().float()
        return cls(site, config, w, topk_mask(w.abs(), config.nnz(site.shape)))

    def weight(self) -> torch.Tensor:
        return masked_quantised(self, self.w, self.mask)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x, self.w, self.mask, self.weight)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.config.bits >= 16:  # elementwise quantisation: gather the rows first, O(len(ids) n)
            return torch.where(self.mask[ids], self.q(self.w[ids]), 0.0)
        return F.embedding(ids, self.weight())

    def on_progress(self, fraction: float) -> None:
        ramp_mask(self.mask, self.w.abs(), self.k, fraction, self._clock, 1.0, self.config.density)

    def export_mask(self) -> torch.Tensor:
        return stored_mask(self.mask, self.w.abs(), self.k)

    @staticmethod
    def stored_bytes(site, config) -> int:
        m, n = site.shape
        return _storage.sparse_bytes(m, n, config.nnz(site.shape), config.bits, config.group_size)

    def export(self):
        return _storage.pack_sparse(self.w, self.export_mask(), self.config.bits, self.config.group_size)

    @classmethod
    def from_export(cls, tensors, site, config):
        m, n = site.shape
        dense, mask = _storage.unpack_sparse(tensors, m, n, config.bits, config.group_size)
        return cls(site, config, dense, mask)
