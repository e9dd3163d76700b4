"""Masked sparse weights shared by `prune` and `kronecker`'s doping overlay.

A mask of the k entries with the largest score (magnitude, or an activation-aware saliency),
optionally with a floor per row (every word of a vocabulary matrix keeps some weights); the
gradual cubic schedule of Zhu & Gupta that ramps a mask's density during fine-tuning and when to
recompute it; the overlay as stored (quantised like pack_sparse); and a product that uses a CSR
copy in inference where that is faster on a CPU.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

RAMP_END = 0.75  # fraction of fine-tuning at which the target density is reached and held
# Sparse inference is slow (Grachev): on CPU torch's CSR product beat the dense one only below
# about 10% density (1024x256 and 2600x1300, batch 350).
CSR_MAX_DENSITY = 0.1
MASK_STEP = 0.01  # recompute the mask each 1% of fine-tuning during the ramp (Zhu & Gupta's delta t)


def cubic_density(fraction: float, start: float, target: float, end: float = RAMP_END) -> float:
    """Zhu & Gupta: from `start` at fraction 0 to `target` at `end`, cubic, then held."""
    ramp = min(max(fraction, 0.0) / end, 1.0)
    return target + (start - target) * (1.0 - ramp) ** 3


def topk_mask(score: torch.Tensor, k: int, row_floor: int = 0) -> torch.Tensor:
    """Bool mask of exactly k largest entries of `score`; ties go to the earlier (row-major) entry.
    With `row_floor`, every row first keeps its `row_floor` best entries (at most k // rows), and
    the rest of the k go to the largest remaining scores anywhere."""
    floor = min(row_floor, k // score.shape[0], score.shape[1]) if score.dim() == 2 and row_floor > 0 else 0
    if floor > 0:
        forced = torch.zeros_like(score, dtype=torch.bool)
        forced.scatter_(1, score.detach().topk(floor, dim=1).indices, True)
        rest = score.detach().masked_fill(forced, float("-inf"))
        return forced | topk_mask(rest, k - floor * score.shape[0])
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


def masked_quantised(module, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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
def ramp_mask(
    mask: torch.Tensor,
    score: torch.Tensor,
    k: int,
    fraction: float,
    clock: "RampClock",
    start: float,
    target: float,
    row_floor: int = 0,
) -> None:
    """Set `mask` in place to the largest entries of `score`, as many as the cubic schedule from
    density `start` to `target` allows at `fraction`, and exactly k from RAMP_END on. After the
    ramp the mask is held, unless a mid-ramp state was loaded (its count is then not k)."""
    if not clock.due(fraction) and not (fraction >= RAMP_END and int(mask.count_nonzero()) != k):
        return
    m, n = mask.shape
    count = k if fraction >= RAMP_END else max(k, round(cubic_density(fraction, start, target) * m * n))
    mask.copy_(topk_mask(score, count, row_floor))


def stored_mask(mask: torch.Tensor, score: torch.Tensor, k: int, row_floor: int = 0) -> torch.Tensor:
    """The mask at the stored density: the current one after the ramp (or before it started),
    else what the end of the ramp would keep."""
    return mask if int(mask.count_nonzero()) == k else topk_mask(score, k, row_floor)


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
