"""Sums of Kronecker products with sparse doping (Doped Kronecker Products, Udaykumar Thakker et al.).

W (m x n) ~= sum_{r<R} A_r (x) B_r + S, with A_r m1 x n1, B_r m2 x n2 (m = m1 m2, n = n1 n2) and S
an m x n overlay of k = round(density * m * n) values (docs/methods.md, Kronecker products with doping).
    W[i1*m2 + i2, j1*n2 + j2] = sum_r A_r[i1, j1] B_r[i2, j2]

Init, plain (Van Loan–Pitsianis): rearrange W into R(W) ((m1 n1) x (m2 n2), row (i1, j1) = vec of
block (i1, j1)), take its rank-R SVD and split sqrt(sigma) between A and B, so that both factors
have the same range (matters for quantisation). With doping, alternate 3 rounds of
KP <- NKP(W - S), S <- top-k |W - KP|; density 1 reconstructs W exactly.
Init, data (docs/methods.md, data-aware initialisation): the error that counts is ||D (W - W_hat) L|| (inputs' moment
H = L L^T, word-frequency rows D). A Kronecker product keeps its form under Kronecker-factored
weights, (D1 (x) D2)(A (x) B)(L1 (x) L2) = D1 A L1 (x) D2 B L2, so H and D are replaced by their
nearest Kronecker products (H1 (x) H2 by Van Loan–Pitsianis, PSD; D by the rank-1 fit of its
m1 x m2 reshape), the NKP is taken of the weighted W and un-weighted. The doping positions are
the largest activation-weighted residuals |R_ij| ||X_j|| sqrt(f_i), and where the inputs are
known their values absorb the error of the entries left out (`_gptq.obs_prune` on the residual).
As the factored weights are an approximation, the plain init is built too and the one with the
smaller error on the calibration statistics is kept: data-aware is never worse.

Forward without materialising A (x) B (pitfall 7): x (.., n) -> X (.., n1, n2),
Y = sum_r A_r X B_r^T (.., m1, m2) -> y (.., m), plus x S^T. lookup(i) = sum_r A_r[i // m2] (x)
B_r[i % m2] + S[i].

Training (CMA and CMR, pitfall 4): S is stored as a dense parameter with a mask; the masked values
are trainable, the others keep their values (the full residual at init) so the anneal can bring
them back. on_progress(f) anneals the doping density from min(1, 10 density) to the target with the
cubic schedule of `prune`, reaching it at f = 0.75 and holding it; while annealing (f < 0.75) and
in train mode, the S pathway gets dropout with probability `cmr` (co-matrix dropout
regularisation), 0 afterwards and in eval mode. Right after build S is at the target density.
Set `kp_only = True` (or call kp_only_weight()) to evaluate with S zeroed and detect CMA.

Stored: A (R m1 x n1, rows quantised) and B (R m2 x n2) at `bits`, plus S as a sparse overlay
(cheaper of CSR and bitmask, values at `bits`) when k > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.errors import UserError
from autoshrink.methods import _storage
from autoshrink.methods._base import CompressedWeight, MethodConfig, calibrated, register
from autoshrink.methods._gptq import obs_prune
from autoshrink.methods._linalg import Metric, kronecker_psd, kronecker_rows, nearest_kronecker, psd_cholesky
from autoshrink.methods._sparse import (
    RAMP_END,
    RampClock,
    SparseProduct,
    masked_quantised,
    ramp_mask,
    stored_mask,
    topk_mask,
)

DOPING_ROUNDS = 3  # alternations of KP <- NKP(W - S), S <- top-k(W - KP)
RAMP_START_FACTOR = 10.0  # the anneal starts at min(1, 10 x target density)


def square_divisor(m: int) -> int:
    """The largest divisor of m that is <= sqrt(m): (d, m // d) is the most square-like pair."""
    return max(d for d in range(1, math.isqrt(m) + 1) if m % d == 0)


def kron_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_r kron(a_r, b_r), materialised (init and checks only)."""
    r, m1, n1 = a.shape
    _, m2, n2 = b.shape
    return torch.einsum("rij,rkl->ikjl", a, b).reshape(m1 * m2, n1 * n2)


@dataclass(frozen=True)
class KroneckerConfig(MethodConfig):
    judged_after_training = True  # a one-shot proxy misjudges it (pitfall 12)
    method = "kronecker"
    size_knob = "density"  # stored bytes grow with the number of kept values
    m1: int = field(
        default=0,
        metadata={
            "help": "rows of A in W ~= A (x) B (must divide m; B has m/m1 rows); 0 = the most square-like divisor of m"
        },
    )
    n1: int = field(
        default=0,
        metadata={"help": "columns of A (must divide n; B has n/n1 columns); 0 = the most square-like divisor of n"},
    )
    terms: int = field(default=1, metadata={"help": "R, the number of Kronecker products summed"})
    density: float = field(
        default=0.0, metadata={"help": "doping: fraction of the m x n entries in the sparse overlay S, in [0, 1]"}
    )
    cmr: float = field(
        default=0.5,
        metadata={
            "help": "CMR (co-matrix dropout): dropout probability of the overlay S's path while its density anneals, so "
            "A (x) B learns to carry the signal, in [0, 1)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_int("m1", 0)
        self.check_int("n1", 0)
        self.check_int("terms", 1)
        self.check_range("density", 0.0, 1.0)
        self.check_range("cmr", 0.0, 1.0, high_open=True)

    def factors(self, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """(m1, m2, n1, n2) for a site of this shape."""
        m, n = shape
        m1 = self.m1 or square_divisor(m)
        n1 = self.n1 or square_divisor(n)
        return m1, m // m1, n1, n // n1

    def nnz(self, shape: tuple[int, int]) -> int:
        return round(self.density * shape[0] * shape[1])

    def check_site(self, site) -> None:
        super().check_site(site)
        m, n = site.shape
        if (self.m1 and m % self.m1) or (self.n1 and n % self.n1):
            raise UserError(
                f"kronecker: A of {self.m1 or 'auto'} x {self.n1 or 'auto'} does not factor the "
                f"{m} x {n} matrix of {site.name!r} (m1 must divide {m} and n1 must divide {n})"
            )
        m1, m2, n1, n2 = self.factors(site.shape)
        if self.terms > min(m1 * n1, m2 * n2):
            raise UserError(
                f"kronecker: terms={self.terms} exceeds the rank {min(m1 * n1, m2 * n2)} of the "
                f"rearranged {m} x {n} matrix of {site.name!r} with A {m1} x {n1}, B {m2} x {n2}"
            )


def _fit(w: torch.Tensor, config: KroneckerConfig, metric: Metric, factored) -> tuple:
    """(A, B, S, mask) of the alternating init; `factored` = ((d1, d2) | None, (L1, L2) | None),
    the Kronecker-factored row and input weights of a data-aware fit (None: plain)."""
    m1, m2, n1, n2 = config.factors(tuple(w.shape))
    k = config.nnz(tuple(w.shape))
    rows, chols = factored if factored is not None else (None, None)
    doped = torch.zeros_like(w)
    for _ in range(DOPING_ROUNDS if k > 0 else 1):
        a, b = _weighted_nkp(w - doped, m1, n1, config.terms, rows, chols)
        residual = w - kron_sum(a, b)
        mask = topk_mask(metric.saliency(residual), k)
        doped = residual * mask
        if metric.moment is not None and k > 0:
            doped = obs_prune(residual, mask, metric.moment)
    if k == 0:
        return a, b, None, None
    # Unmasked entries keep the plain residual (they can revive in the anneal); masked ones the fit.
    return a, b, torch.where(mask, doped, residual), mask


def _weighted_nkp(w: torch.Tensor, m1: int, n1: int, terms: int, rows, chols) -> tuple[torch.Tensor, torch.Tensor]:
    """NKP of (D1 (x) D2) W (L1 (x) L2), un-weighted: A = D1^-1 A' L1^-1, B = D2^-1 B' L2^-1."""
    if rows is None and chols is None:
        return nearest_kronecker(w, m1, n1, terms)
    t = w.double()
    if rows is not None:
        t = t * torch.kron(*rows)[:, None]
    if chols is not None:
        t = t @ torch.kron(*chols)
    a, b = nearest_kronecker(t, m1, n1, terms)
    a, b = a.double(), b.double()
    if rows is not None:
        a, b = a / rows[0][None, :, None], b / rows[1][None, :, None]
    if chols is not None:
        a = torch.linalg.solve_triangular(chols[0].T, a.transpose(1, 2), upper=True).transpose(1, 2)
        b = torch.linalg.solve_triangular(chols[1].T, b.transpose(1, 2), upper=True).transpose(1, 2)
    scale = (b.abs().amax(dim=(1, 2)) / a.abs().amax(dim=(1, 2)).clamp_min(1e-30)).sqrt()[:, None, None]
    return (a * scale).float(), (b / scale).float()  # same range in both factors


@register(KroneckerConfig)
class KroneckerWeight(CompressedWeight):
    settles_at = RAMP_END  # the doping reaches its stored density here

    def __init__(
        self,
        site,
        config: KroneckerConfig,
        a: torch.Tensor,
        b: torch.Tensor,
        s: torch.Tensor | None,
        mask: torch.Tensor | None,
    ):
        super().__init__(site, config)
        self.k = config.nnz(site.shape)
        self.a = nn.Parameter(a.detach().clone().float())
        self.b = nn.Parameter(b.detach().clone().float())
        if self.k > 0:
            self.s = nn.Parameter(s.detach().clone().float())
            self.register_buffer("mask", mask.bool().clone())
        else:
            self.s = None
            self.mask = None
        self.kp_only = False  # evaluate with S zeroed (CMA check)
        self.dropout = 0.0  # CMR probability now; set by on_progress
        self._product = SparseProduct()
        self._clock = RampClock()

    @classmethod
    def build(cls, weight, site, config, stats=None):
        config.check_site(site)
        w = weight.detach().float()
        plain = cls(site, config, *_fit(w, config, Metric(), None))
        metric = Metric.of(site, calibrated(config, stats))
        if metric.plain:
            return plain
        m1, m2, n1, n2 = config.factors(site.shape)
        factored = (
            None if metric.row is None else kronecker_rows(metric.row, (m1, m2)),
            None if metric.chol is None else [psd_cholesky(h) for h in kronecker_psd(metric.moment, (n1, n2))],
        )
        aware = cls(site, config, *_fit(w, config, metric, factored))
        with torch.no_grad():
            return aware if metric.error(w, aware.weight()) <= metric.error(w, plain.weight()) else plain

    # --- the stored tensors, quantised -----------------------------------------------------
    def factor_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        r, m1, n1 = self.a.shape
        _, m2, n2 = self.b.shape
        qa = self.q(self.a.reshape(r * m1, n1)).reshape(r, m1, n1)  # per-row scales: rows of each A_r
        qb = self.q(self.b.reshape(r * m2, n2)).reshape(r, m2, n2)
        return qa, qb

    def sparse_weight(self) -> torch.Tensor:
        return masked_quantised(self, self.s, self.mask)

    def kp_only_weight(self) -> torch.Tensor:
        return kron_sum(*self.factor_tensors())

    def weight(self) -> torch.Tensor:
        w = self.kp_only_weight()
        return w if self.s is None or self.kp_only else w + self.sparse_weight()

    def build_sequence_weight(self) -> torch.Tensor:
        """CMR on the entries of S (the Doped Kronecker paper allows a mask on S entries) when W is built once."""
        w = self.kp_only_weight()
        return w if self.s is None or self.kp_only else w + self._cmr(self.sparse_weight())

    # --- forward -----------------------------------------------------------------------------
    def _cmr(self, y: torch.Tensor) -> torch.Tensor:
        return F.dropout(y, self.dropout) if self.training and self.dropout > 0 else y

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        qa, qb = self.factor_tensors()
        r, m1, n1 = qa.shape
        _, m2, n2 = qb.shape
        lead = x.shape[:-1]
        xs = x.reshape(-1, n1, n2)
        # Y = sum_r A_r X B_r^T; contract the side that leaves the smaller intermediate first.
        if n1 * m2 * (n2 + m1) <= m1 * n2 * (n1 + m2):
            z = torch.einsum("bjk,rlk->brjl", xs, qb)  # (N, R, n1, m2)
            y = torch.einsum("rij,brjl->bil", qa, z)
        else:
            z = torch.einsum("rij,bjk->brik", qa, xs)  # (N, R, m1, n2)
            y = torch.einsum("brik,rlk->bil", z, qb)
        y = y.reshape(*lead, m1 * m2)
        if self.s is None or self.kp_only:
            return y
        return y + self._cmr(self._product(x, self.s, self.mask, self.sparse_weight))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        qa, qb = self.factor_tensors()
        m2 = qb.shape[1]
        rows = torch.einsum("r...j,r...k->...jk", qa[:, ids // m2], qb[:, ids % m2]).reshape(*ids.shape, -1)
        if self.s is None or self.kp_only:
            return rows
        if self.config.bits >= 16:  # elementwise quantisation: gather the rows first
            sparse = torch.where(self.mask[ids], self.q(self.s[ids]), 0.0)
        else:
            sparse = F.embedding(ids, self.sparse_weight())
        return rows + self._cmr(sparse)

    @torch.no_grad()
    def on_progress(self, fraction: float) -> None:
        if self.s is None:
            return
        annealing = fraction < RAMP_END
        self.dropout = self.config.cmr if annealing else 0.0
        start = min(1.0, RAMP_START_FACTOR * self.config.density)
        ramp_mask(self.mask, self.s.abs(), self.k, fraction, self._clock, start, self.config.density)

    # --- storage -----------------------------------------------------------------------------
    def export_mask(self) -> torch.Tensor:
        return stored_mask(self.mask, self.s.abs(), self.k)

    @classmethod
    def export_specs(cls, site, config, freqs=None):
        m1, m2, n1, n2 = config.factors(site.shape)
        r = config.terms
        out = {**cls.float_specs("A", (r * m1, n1), config), **cls.float_specs("B", (r * m2, n2), config)}
        k = config.nnz(site.shape)
        if k > 0:
            out.update(_storage.prefixed("S", _storage.sparse_specs(*site.shape, k, config.bits, config.group_size)))
        return out

    def export(self):
        r, m1, n1 = self.a.shape
        _, m2, n2 = self.b.shape
        out = {**self.pack("A", self.a.reshape(r * m1, n1)), **self.pack("B", self.b.reshape(r * m2, n2))}
        if self.s is not None:
            packed = _storage.pack_sparse(self.s, self.export_mask(), self.config.bits, self.config.group_size)
            out.update(_storage.prefixed("S", packed))
        return out

    @classmethod
    def from_export(cls, tensors, site, config):
        m1, m2, n1, n2 = config.factors(site.shape)
        r = config.terms
        a = cls.unpack(tensors, "A", (r * m1, n1), config).reshape(r, m1, n1)
        b = cls.unpack(tensors, "B", (r * m2, n2), config).reshape(r, m2, n2)
        if config.nnz(site.shape) == 0:
            return cls(site, config, a, b, None, None)
        sparse = {key[2:]: t for key, t in tensors.items() if key.startswith("S.")}
        s, mask = _storage.unpack_sparse(sparse, *site.shape, config.bits, config.group_size)
        return cls(site, config, a, b, s, mask)
