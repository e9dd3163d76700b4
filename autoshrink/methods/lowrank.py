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
Gates (`gates` k > 1, an LSTM matrix's four gates: i, f, g, o): the rows are cut into k equal
blocks, each factorised apart, W_j ~= U_j V_j, and the total `rank` R is split among them where
the blocks' (whitened, data-aware) singular values are largest (`split_rank`), so the output gate,
whose block holds most of the energy, gets the most rank. Stored: U as one (m/k) x R matrix whose
columns are the blocks' (transposed: a scale per `u_groups` rows of each column, or per column
of a block at 0, so each column's groups lie in one block), V (R x n), and the split (`ranks`, k
int16): the shapes follow from R and k alone. At equal parameters it lowered the untrained loss
of kjv-lstm's LSTM matrices at 10 of 12 (site, rank) pairs, by up to 57% (results/gate_blocks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.errors import UserError
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
    written_when_set = ("gates",)
    rank: int = field(
        default=0,
        metadata={
            "help": "rank r of W ~= U V (clipped to min(m, n)); pays off when r < mn/(m+n); 0 = a quarter of that break-even rank"
        },
    )

    u_groups: int = field(default=0, metadata={"help": U_GROUPS_HELP})
    gates: int = field(
        default=0,
        metadata={
            "help": "row blocks factorised apart (4: an LSTM matrix's gates), the total rank split where their "
            "singular values are largest; U stored transposed (u_groups 0: a scale per block column); 0 = one "
            "factorisation"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_int("rank", 0)
        self.check_int("u_groups", 0)
        self.check_int("gates", 0)
        if self.gates == 1:
            raise UserError("lowrank: gates=1 is one factorisation: write gates=0 (the same plan has one spelling)")

    @property
    def blocks(self) -> int:
        return max(1, self.gates)

    def u_layout(self, site: Site) -> int:
        """U's groups as stored (0: in rows): `u_groups`, or with gates a block's rows at 0."""
        return self.u_groups if self.blocks == 1 else self.u_groups or site.shape[0] // self.blocks

    def check_site(self, site: Site) -> None:
        super().check_site(site)
        if self.blocks > 1 and site.is_vocab:
            raise UserError(f"lowrank: gates={self.gates} applies to matrices, not to vocabulary site {site.name!r}")
        if self.blocks > 1 and site.shape[0] % self.blocks:
            raise UserError(
                f"lowrank: gates={self.gates} needs rows that split into equal blocks; {site.name!r} has {site.shape[0]}"
            )

    def effective_rank(self, site: Site) -> int:
        """The rank R (the total over the blocks), clipped to what the blocks can hold."""
        m, n = site.shape
        rank = self.rank or max(1, int(AUTO_RANK_SHARE * m * n / (m + n)))
        return min(rank, self.blocks * min(m // self.blocks, n))


def split_rank(weight: torch.Tensor, metric: Metric, total: int, blocks: int) -> list[int]:
    """Each row block's rank: the `total` largest singular values over the blocks, each block's
    taken under its rows of `metric` (whitened inputs, row weights)."""
    rows = weight.shape[0] // blocks
    values = []
    for k in range(blocks):
        part = metric.select_rows(torch.arange(k * rows, (k + 1) * rows))
        values += [(float(x), k) for x in torch.linalg.svdvals(part.whiten(weight[k * rows : (k + 1) * rows]).float())]
    ranks = [0] * blocks
    for _, k in sorted(values, reverse=True)[:total]:
        ranks[k] += 1
    return ranks


def low_rank_init(
    weight: torch.Tensor, site: Site, config: LowRankConfig, r: int, metric: Metric
) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) of rank r for one matrix: the fit under `metric`, then (data-aware, below 16 bits)
    GPTQ-rounded to the values they are stored as."""
    u, v = weighted_low_rank(weight, r, metric)
    if metric.plain or config.bits >= 16:
        return u, v
    weights = None if metric.row is None else metric.row**2
    return gptq_pair(u, v, config.bits, config.group_size, metric.moment, weights, config.u_layout(site))


def gate_init(
    weight: torch.Tensor, site: Site, config: LowRankConfig, metric: Metric
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(U as (m/k) x R with the blocks' columns side by side, V (R x n), the blocks' ranks): each
    block fitted and rounded alone, under its rows of `metric` (row weights, whitened inputs)."""
    per_rows = Metric(metric.row, metric.chol)  # a block's rows; the cross-row output moment has no blocks
    k, rows = config.blocks, site.shape[0] // config.blocks
    ranks = split_rank(weight, per_rows, config.effective_rank(site), k)
    us, vs = [], []
    for j, r in enumerate(ranks):
        block = torch.arange(j * rows, (j + 1) * rows)
        if r:
            u, v = low_rank_init(weight[block], site, config, r, per_rows.select_rows(block))
            us.append(u)
            vs.append(v)
    return torch.cat(us, 1), torch.cat(vs, 0), ranks


@register(LowRankConfig)
class LowRankWeight(CompressedWeight):
    def __init__(
        self, site: Site, config: LowRankConfig, u: torch.Tensor, v: torch.Tensor, ranks: list[int] | None = None
    ):
        super().__init__(site, config)
        self.u = nn.Parameter(u.detach().clone().float())
        self.v = nn.Parameter(v.detach().clone().float())
        if config.blocks > 1:  # the blocks' split is model state: a checkpoint restores it with the factors
            self.split = list(ranks)  # as Python ints: a forward never reads a tensor back (GPU, meta)
            self.register_buffer("ranks", torch.tensor(ranks, dtype=torch.int16))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "ranks" in state_dict:
            self.split = state_dict[prefix + "ranks"].tolist()

    @classmethod
    def build(cls, weight, site, config, stats=None):
        config.check_site(site)
        metric = Metric.of(site, calibrated(config, stats))
        if config.blocks > 1:
            return cls(site, config, *gate_init(weight, site, config, metric))
        return cls(site, config, *low_rank_init(weight, site, config, config.effective_rank(site), metric))

    def stored_u(self) -> torch.Tensor:
        return self.q_factor(self.u, self.config.u_layout(self.site))

    def _blocks(self) -> list[tuple[torch.Tensor, slice]]:
        """(each block's U_j, its columns of U and rows of V)."""
        u, at, out = self.stored_u(), 0, []
        for r in self.split:
            out.append((u[:, at : at + r], slice(at, at + r)))
            at += r
        return out

    def weight(self) -> torch.Tensor:
        v = self.q(self.v)
        if self.config.blocks == 1:
            return self.stored_u() @ v
        return torch.cat([u @ v[cols] for u, cols in self._blocks()], 0)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        z = F.linear(x, self.q(self.v))
        if self.config.blocks == 1:
            return F.linear(z, self.stored_u())
        return torch.cat([F.linear(z[..., cols], u) for u, cols in self._blocks()], -1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        # In rows (groups within a row), quantising only the gathered rows gives the same values
        # as quantising all of U, at the cost of the rows used; transposed, a row's grid is its
        # column groups', so U is quantised whole.
        if self.config.blocks > 1:  # never on a vocabulary site (check_site): the rows of W, as any method's
            return super().lookup(ids)
        flat = ids.reshape(-1)
        rows = self.stored_u()[flat] if self.config.u_groups else self.q(self.u[flat])
        return (rows @ self.q(self.v)).reshape(*ids.shape, self.v.shape[1])

    @classmethod
    def export_specs(cls, site, config, freqs=None):
        m, n = site.shape
        r = config.effective_rank(site)
        specs = {
            **cls.factor_specs("U", (m // config.blocks, r), config, config.u_layout(site)),
            **cls.float_specs("V", (r, n), config),
        }
        return specs if config.blocks == 1 else {**specs, "ranks": (torch.int16, (config.blocks,))}

    def export(self):
        out = {**self.pack_factor("U", self.u, self.config.u_layout(self.site)), **self.pack("V", self.v)}
        return out if self.config.blocks == 1 else {**out, "ranks": torch.tensor(self.split, dtype=torch.int16)}

    @classmethod
    def from_export(cls, tensors, site, config):
        m, n = site.shape
        r = config.effective_rank(site)
        u = cls.unpack_factor(tensors, "U", (m // config.blocks, r), config, config.u_layout(site))
        ranks = tensors["ranks"].tolist() if config.blocks > 1 else None
        return cls(site, config, u, cls.unpack(tensors, "V", (r, n), config), ranks)
