"""Low-rank factorisation W ~= U V (Grachev et al. 2017, "LR"; the LMF baseline of Doped KP): `lowrank`.

Stored: U (m x r) and V (r x n), r = min(rank, m, n); params r(m + n), which only pays off when
r < mn / (m + n) (the search masks larger ranks, docs/methods.md pitfall 8). Forward y = U (V x): two
skinny products, W is never formed; an embedding row is U[i] V.
Init: truncated SVD W ~= U_r S_r V_r^T with S split as U = U_r S^1/2, V = S^1/2 V_r^T, so the two
factors have matching ranges when they are quantised (pitfall 11). By Eckart-Young the init is the
best rank-r approximation in Frobenius norm.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.errors import UserError
from autoshrink.methods._base import CompressedWeight, MethodConfig, register
from autoshrink.sites import Site


@dataclass(frozen=True)
class LowRankConfig(MethodConfig):
    method = "lowrank"
    size_knob = "rank"
    rank: int = field(default=32, metadata={"help": "rank r of W ~= U V (clipped to min(m, n)); pays off when r < mn/(m+n)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise UserError(f"lowrank: rank must be an integer >= 1, got {self.rank!r}")

    def effective_rank(self, site: Site) -> int:
        m, n = site.shape
        return min(self.rank, m, n)


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.linalg.svd(a, full_matrices=False), computed on the tall orientation: on the CPU a
    wide matrix was measured ~20x slower than its transpose (325 x 20000: 30 s vs 1.5 s)."""
    a = a.detach().float()
    if a.shape[0] >= a.shape[1]:
        return torch.linalg.svd(a, full_matrices=False)
    u, s, vh = torch.linalg.svd(a.T, full_matrices=False)
    return vh.T, s, u.T


def truncated_svd_factors(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with U V the best rank-r approximation of w and sqrt(S) on each side."""
    u, s, vh = thin_svd(w)
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r]


@register(LowRankConfig)
class LowRankWeight(CompressedWeight):
    def __init__(self, site: Site, config: LowRankConfig, u: torch.Tensor, v: torch.Tensor):
        super().__init__(site, config)
        self.u = nn.Parameter(u.detach().clone().float())
        self.v = nn.Parameter(v.detach().clone().float())

    @classmethod
    def build(cls, weight, site, config, freqs=None):
        config.check_site(site)
        u, v = truncated_svd_factors(weight, config.effective_rank(site))
        return cls(site, config, u, v)

    def weight(self) -> torch.Tensor:
        return self.q(self.u) @ self.q(self.v)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.q(self.v)), self.q(self.u))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        # Quantisation is per row of U (groups within a row), so quantising only the gathered
        # rows gives the same values as quantising all of U, at the cost of the rows used.
        rows = self.q(self.u[ids.reshape(-1)])
        return (rows @ self.q(self.v)).reshape(*ids.shape, self.v.shape[1])

    @staticmethod
    def stored_bytes(site, config) -> int:
        m, n = site.shape
        r = config.effective_rank(site)
        return CompressedWeight.float_bytes((m, r), config) + CompressedWeight.float_bytes((r, n), config)

    def export(self):
        return {**self.pack("U", self.u), **self.pack("V", self.v)}

    @classmethod
    def from_export(cls, tensors, site, config):
        m, n = site.shape
        r = config.effective_rank(site)
        return cls(site, config, cls.unpack(tensors, "U", (m, r), config), cls.unpack(tensors, "V", (r, n), config))
