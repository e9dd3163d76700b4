"""Tensor-train (TT) matrix W (Grachev et al. 2017; TT format of Oseledets 2011): the `tt` method.

m = m_1...m_d and n = n_1...n_d are factored automatically (`balanced_factors`, d = `cores`), and
W is read as a d-way tensor with modes m_k n_k: W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ...
G_d[:, i_d, j_d, :], with row and column indices row-major in their digits (i_1 most significant).
Stored: the cores G_k (r_{k-1} x m_k x n_k x r_k), r_0 = r_d = 1; params sum_k r_{k-1} m_k n_k r_k.
Each core is stored as the matrix (r_{k-1} m_k) x (n_k r_k), so `bits` quantises per such row. The
mode sizes follow from (m, n, d) and the ranks from (m, n, d, rank) deterministically, so nothing
else is stored. One shared rank: r_k = min(rank, prod_{i<=k} m_i n_i, prod_{i>k} m_i n_i), the
largest useful value, so a huge rank is the exact TT decomposition.
Init, plain: TT-SVD (sequential reshape + truncated SVD, Oseledets 2011) of the permuted W.
Init, data (docs/methods.md, data-aware initialisation): the site's error ||D (W - W_hat) L|| (inputs' moment H = L L^T,
word-frequency rows D) does not keep the TT form, but its Kronecker approximation over the TT
digits does: D ~= D_1 (x) .. (x) D_d (rank-1 fits), H ~= H_1 (x) .. (x) H_d (nearest Kronecker
products); TT-SVD of the weighted W, then each core un-weighted. As that is an approximation, the
plain init is built too and the one with the smaller error on the calibration statistics kept.
Stored cores round to nearest (GPTQ would need each core's inputs, which mix the other cores).
Forward: x, reshaped to (n_1, ..., n_d), is contracted core by core; W is never formed (pitfall 7).
An embedding row gathers the row's digit i_k from each core.
Grachev's TT LSTMs never reached acceptable quality: a low-prior option in the search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import nn

from autoshrink.methods._base import CompressedWeight, MethodConfig, calibrated, register
from autoshrink.methods._linalg import Metric, kronecker_psd, kronecker_rows, psd_cholesky, thin_svd
from autoshrink.sites import Site

CORES = (2, 3, 4)


@dataclass(frozen=True)
class TTConfig(MethodConfig):
    method = "tt"
    size_knob = "rank"
    cores: int = field(
        default=3,
        metadata={"help": "number of TT cores d (2, 3 or 4); m and n are each factored into d balanced factors"},
    )
    rank: int = field(
        default=8, metadata={"help": "shared TT-rank of every core boundary (clipped to its largest useful value)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_int("cores", min(CORES), max(CORES))
        self.check_int("rank", 1)

    def layout(self, site: Site) -> "TTLayout":
        return tt_layout(site.shape[0], site.shape[1], self.cores, self.rank)


def _divisors(x: int) -> list[int]:
    small = [f for f in range(1, math.isqrt(x) + 1) if x % f == 0]
    return sorted(set(small + [x // f for f in small]))


@lru_cache(maxsize=None)
def balanced_factors(x: int, d: int) -> tuple[int, ...]:
    """x as d integer factors, the most balanced first: the smallest largest factor, then the
    next largest, ... (lexicographic on the descending factors). Returned in descending order;
    factors of 1 appear only when x has too few prime factors (97 -> 97 x 1 x 1)."""
    if x < 1 or d < 1:
        raise ValueError(f"cannot factor {x} into {d} factors")
    divs = _divisors(x)
    best: tuple[int, ...] | None = None

    def search(rest: int, k: int, cap: int, acc: tuple[int, ...]) -> None:
        nonlocal best
        if k == 1:
            if rest <= cap:
                cand = acc + (rest,)
                if best is None or cand < best:
                    best = cand
            return
        # The largest remaining factor f is at least rest^(1/k) and at most cap (descending order).
        for f in divs:
            if f > cap or f > rest:
                break
            if rest % f or f**k < rest:
                continue
            search(rest // f, k - 1, f, acc + (f,))
            if best is not None and best[: len(acc) + 1] < acc + (f,):
                break  # larger f only gives lexicographically worse candidates

    search(x, d, x, ())
    assert best is not None and math.prod(best) == x
    return best


@dataclass(frozen=True)
class TTLayout:
    row_modes: tuple[int, ...]  # m_k
    col_modes: tuple[int, ...]  # n_k
    ranks: tuple[int, ...]  # r_0 .. r_d

    def core_shape(self, k: int) -> tuple[int, int, int, int]:
        return self.ranks[k], self.row_modes[k], self.col_modes[k], self.ranks[k + 1]

    def stored_shape(self, k: int) -> tuple[int, int]:
        r0, mk, nk, r1 = self.core_shape(k)
        return r0 * mk, nk * r1


def tt_layout(m: int, n: int, d: int, rank: int) -> TTLayout:
    """Row factors ascending, column factors descending: the core-by-core product then holds few
    output digits while many input digits remain (fewer FLOPs), and the modes m_k n_k even out."""
    rows, cols = balanced_factors(m, d)[::-1], balanced_factors(n, d)
    modes = [a * b for a, b in zip(rows, cols)]
    ranks = [1] + [min(rank, math.prod(modes[: k + 1]), math.prod(modes[k + 1 :])) for k in range(d - 1)] + [1]
    return TTLayout(rows, cols, tuple(ranks))


def tt_svd(w: torch.Tensor, layout: TTLayout) -> list[torch.Tensor]:
    """TT-SVD of the m x n matrix permuted to modes (m_k n_k): cores r_{k-1} x m_k x n_k x r_k."""
    rows, cols = layout.row_modes, layout.col_modes
    d = len(rows)
    t = w.detach().float().reshape(*rows, *cols)
    t = t.permute(*[p for k in range(d) for p in (k, d + k)])  # (m_1, n_1, m_2, n_2, ...)
    rest = t.reshape(1, -1)
    cores = []
    for k in range(d - 1):
        r0, mk, nk, r1 = layout.core_shape(k)
        u, s, vh = thin_svd(rest.reshape(r0 * mk * nk, -1))
        cores.append(u[:, :r1].reshape(r0, mk, nk, r1))
        rest = s[:r1, None] * vh[:r1]
    cores.append(rest.reshape(layout.core_shape(d - 1)))
    return cores


def weighted_tt_svd(w: torch.Tensor, layout: TTLayout, metric: Metric) -> list[torch.Tensor]:
    """TT-SVD under the site's error ||D (W - W_hat) L|| with D and H = L L^T replaced by
    Kronecker products over the TT digits (D_1 (x) .. (x) D_d, L_1 (x) .. (x) L_d), under which a
    TT matrix stays one: TT-SVD of the weighted W, then core k un-weighted by D_k^-1 and L_k^-1."""
    rows = None if metric.row is None else kronecker_rows(metric.row, layout.row_modes)
    chols = None if metric.chol is None else [psd_cholesky(h) for h in kronecker_psd(metric.moment, layout.col_modes)]
    t = w.detach().double()
    if rows is not None:
        t = t * _kron_all(rows)[:, None]
    if chols is not None:
        t = t @ _kron_all(chols)
    cores = [c.double() for c in tt_svd(t, layout)]
    for k, core in enumerate(cores):
        if rows is not None:
            core = core / rows[k][None, :, None, None]
        if chols is not None:
            inverse = torch.linalg.solve_triangular(
                chols[k], torch.eye(chols[k].shape[0], dtype=torch.float64), upper=False
            )
            core = torch.einsum("aijb,jc->aicb", core, inverse)
        cores[k] = core.float()
    return cores


def _kron_all(factors: list[torch.Tensor]) -> torch.Tensor:
    out = factors[0]
    for f in factors[1:]:
        out = torch.kron(out, f)
    return out


@register(TTConfig)
class TTWeight(CompressedWeight):
    def __init__(self, site: Site, config: TTConfig, cores: list[torch.Tensor]):
        super().__init__(site, config)
        self.layout = config.layout(site)
        self.cores = nn.ParameterList(
            [nn.Parameter(c.detach().clone().float().reshape(self.layout.core_shape(k))) for k, c in enumerate(cores)]
        )

    @classmethod
    def build(cls, weight, site, config, stats=None):
        config.check_site(site)
        layout = config.layout(site)
        plain = cls(site, config, tt_svd(weight, layout))
        metric = Metric.of(site, calibrated(config, stats))
        if metric.plain:
            return plain
        aware = cls(site, config, weighted_tt_svd(weight, layout, metric))
        with torch.no_grad():
            return aware if metric.error(weight, aware.weight()) <= metric.error(weight, plain.weight()) else plain

    def _core(self, k: int) -> torch.Tensor:
        """Core k as stored (quantised per row of its (r_{k-1} m_k) x (n_k r_k) matrix)."""
        g = self.cores[k]
        return self.q(g.reshape(self.layout.stored_shape(k))).reshape(g.shape)

    def weight(self) -> torch.Tensor:
        eye = torch.eye(self.site.shape[1], device=self.cores[0].device, dtype=self.cores[0].dtype)
        return self.matmul(eye).T  # for checks only: forms W

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        m, n = self.site.shape
        cols, d = self.layout.col_modes, len(self.cores)
        lead = x.shape[:-1]
        # The state is a matrix (j_{k+1}..j_d, batch, i_1..i_{k-1}) x (j_k, r_{k-1}): each core is
        # one GEMM with the small (n_k r_{k-1}) x (m_k r_k) core, then the next input digit j_{k+1}
        # moves from the front to the back (one transpose); W is never formed.
        state = x.reshape(-1, cols[0], n // cols[0]).permute(2, 0, 1).reshape(-1, cols[0])
        for k in range(d):
            r0, mk, nk, r1 = self.layout.core_shape(k)
            g = self._core(k).permute(2, 0, 1, 3).reshape(nk * r0, mk * r1)
            state = state @ g  # rows x (i_k, r_k)
            if k + 1 < d:
                nxt = cols[k + 1]
                state = state.reshape(nxt, -1, r1).transpose(0, 1).reshape(-1, nxt * r1)
        return state.reshape(*lead, m)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        digits, rem = [], flat
        for mk in reversed(self.layout.row_modes):
            digits.append(rem % mk)
            rem = rem // mk
        digits.reverse()
        # acc: (L, n_1..n_k, r_k), grown one core at a time from the row's digit i_k in each core.
        acc = self._core(0)[0, digits[0]]  # (L, n_1, r_1)
        for k in range(1, len(self.cores)):
            r0, mk, nk, r1 = self.layout.core_shape(k)
            g = self._core(k).permute(1, 0, 2, 3)[digits[k]].reshape(-1, r0, nk * r1)  # (L, r_{k-1}, n_k r_k)
            acc = torch.bmm(acc, g).reshape(flat.shape[0], -1, r1)
        return acc.reshape(*ids.shape, self.site.shape[1])

    @classmethod
    def export_specs(cls, site, config, freqs=None):
        layout = config.layout(site)
        return {
            name: spec
            for k in range(config.cores)
            for name, spec in cls.float_specs(f"core{k}", layout.stored_shape(k), config).items()
        }

    def export(self):
        out = {}
        for k, g in enumerate(self.cores):
            out.update(self.pack(f"core{k}", g.reshape(self.layout.stored_shape(k))))
        return out

    @classmethod
    def from_export(cls, tensors, site, config):
        layout = config.layout(site)
        return cls(
            site, config, [cls.unpack(tensors, f"core{k}", layout.stored_shape(k), config) for k in range(config.cores)]
        )
