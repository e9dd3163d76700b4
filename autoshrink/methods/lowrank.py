"""Low-rank factorisation W ~= U V (Grachev et al. 2017, "LR"; the LMF baseline of Doped KP): `lowrank`.

Stored: U (m x r) and V (r x n), r = min(rank, m, n); params r(m + n), which only pays off when
r < mn / (m + n) (the search masks larger ranks, docs/methods.md pitfall 8). Forward y = U (V x): two
skinny products, W is never formed; an embedding row is U[i] V.
Init, plain: truncated SVD W ~= U_r S_r V_r^T with S split as U = U_r S^1/2, V = S^1/2 V_r^T, so
the two factors have matching ranges when they are quantised (pitfall 11); by Eckart-Young the
best rank-r approximation in Frobenius norm.
Init, data (docs/methods.md, data-aware initialisation): the best rank-r fit of the site's output error,
||D (W - U V) L||, by SVD of D W L (`_linalg.weighted_low_rank`): L whitens the calibrated inputs
(SVD-LLM) on the LSTM and softmax matrices, D = diag(sqrt f) weights the rows by word frequency
on the embedding and softmax; each rank-1 term is then rescaled so U and V share one range.
Below 16 bits the factors are rounded by GPTQ (`_gptq.gptq_pair`): V on the inputs' moment, U on
that of V x (an embedding: V's rows on the frequency-weighted U, then U's rows).
Storage of U: by default in rows, one scale and minimum (4 bytes) per row across its r values,
which on a vocabulary matrix of small rank costs more than the codes (10,002 words x 4 bytes
against 10,002 x 6 x 3 bits at rank 6). `u_groups` g > 0 stores U transposed, each column in
groups of g consecutive rows (words of similar frequency: the vocabulary is frequency-ordered),
so scales cost 4 r ceil(m / g) bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.methods._base import CompressedWeight, MethodConfig, calibrated, register
from autoshrink.methods._gptq import gptq_pair
from autoshrink.methods._linalg import Metric, weighted_low_rank
from autoshrink.methods._storage import U_GROUPS_HELP
from autoshrink.sites import Site

AUTO_RANK_SHARE = 0.25  # rank 0: this share of the break-even rank mn / (m + n), about 4x at fp32
# U stored transposed, a scale per this many rows of a column: the spaces' vocabulary setting and the
# benchmark's other layout; at equal bytes it beat per-row scales on the reference softmax at ranks 6-32
# (untrained loss 1.12 -> 0.65 at 63 KB, 3 bits; 0.218 -> 0.201 at 204 KB, 4 bits)
U_GROUPS = 128


@dataclass(frozen=True)
class LowRankConfig(MethodConfig):
    method = "lowrank"
    size_knob = "rank"
    rank: int = field(
        default=0,
        metadata={
            "help": "rank r of W ~= U V (clipped to min(m, n)); pays off when r < mn/(m+n); 0 = a quarter of that break-even rank"
        },
    )

    u_groups: int = field(default=0, metadata={"help": U_GROUPS_HELP})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_int("rank", 0)
        self.check_int("u_groups", 0)

    def effective_rank(self, site: Site) -> int:
        m, n = site.shape
        rank = self.rank or max(1, int(AUTO_RANK_SHARE * m * n / (m + n)))
        return min(rank, m, n)


def low_rank_init(
    weight: torch.Tensor, site: Site, config: LowRankConfig, r: int, metric: Metric
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) of rank r for one matrix: the fit under `metric`, then (data-aware, below 16 bits)
    GPTQ-rounded to the values they are stored as."""
    u, v = weighted_low_rank(weight, r, metric)
    if metric.plain or config.bits >= 16:
        return u, v
    weights = None if metric.row is None else metric.row**2
    return gptq_pair(u, v, config.bits, config.group_size, metric.moment, weights, config.u_groups)


@register(LowRankConfig)
class LowRankWeight(CompressedWeight):
    def __init__(self, site: Site, config: LowRankConfig, u: torch.Tensor, v: torch.Tensor):
        super().__init__(site, config)
        self.u = nn.Parameter(u.detach().clone().float())
        self.v = nn.Parameter(v.detach().clone().float())

    @classmethod
    def build(cls, weight, site, config, stats=None):
        config.check_site(site)
        metric = Metric.of(site, calibrated(config, stats))
        return cls(site, config, *low_rank_init(weight, site, config, config.effective_rank(site), metric))

    def stored_u(self) -> torch.Tensor:
        return self.q_factor(self.u, self.config.u_groups)

    def weight(self) -> torch.Tensor:
        return self.stored_u() @ self.q(self.v)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.q(self.v)), self.stored_u())

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        # In rows (groups within a row), quantising only the gathered rows gives the same values
        # as quantising all of U, at the cost of the rows used; transposed, a row's grid is its
        # column groups', so U is quantised whole.
        flat = ids.reshape(-1)
        rows = self.stored_u()[flat] if self.config.u_groups else self.q(self.u[flat])
        return (rows @ self.q(self.v)).reshape(*ids.shape, self.v.shape[1])

    @classmethod
    def export_specs(cls, site, config, freqs=None):
        m, n = site.shape
        r = config.effective_rank(site)
        return {**cls.factor_specs("U", (m, r), config, config.u_groups), **cls.float_specs("V", (r, n), config)}

    def export(self):
        return {**self.pack_factor("U", self.u, self.config.u_groups), **self.pack("V", self.v)}

    @classmethod
    def from_export(cls, tensors, site, config):
        m, n = site.shape
        r = config.effective_rank(site)
        u = cls.unpack_factor(tensors, "U", (m, r), config, config.u_groups)
        return cls(site, config, u, cls.unpack(tensors, "V", (r, n), config))
