"""LightRNN 2-component shared word tables (Li et al. 2016, arXiv 1610.09893): the `lightrnn` method.

Every word w sits at its own cell (r(w), c(w)) of an R x C table (R C >= V; default R = ceil(sqrt V),
C = ceil(V / R)), so a vocabulary site stores O(sqrt V) vectors instead of V.
  - embedding site [ours: the summed one-step variant, a drop-in layer]: row(w) = X_r[r(w)] + X_c[c(w)].
  - softmax site [ours]: log P(w | h) = log_softmax(W_r h + b_r)[r(w)]
        + log_softmax(W_c (h + U[r(w)]) + b_c)[c(w)],
    the paper's P_r(row) P_c(col | row) with the row conditioning the column softmax through a
    row table U (R x D): column logits W_c h + b_c + (U W_c^T)[r]. The R x C matrix U W_c^T is
    formed once per forward, so all V log-probabilities cost O(D (R + C) + R C) per position
    (one CPU thread, V=33k, D=400: forward+backward 6x faster than the dense softmax for 35
    positions, 1.4x for 700).
    matmul returns these log-probabilities (valid logits; they sum to 1 over the words when
    R C = V, and to 1 minus the empty cells' mass otherwise). The method carries its own biases
    b_r, b_c, so the site bias is not used (uses_site_bias = False).
  - weight() of a softmax site is the linearisation W_r[r(w)] + W_c[c(w)]: matmul equals
    x @ weight().T + b_r[r] + b_c[c] + (U W_c^T)[r, c] - lse_rows(x) - lse_cols(x, r), i.e. not
    weight() beyond offsets per position and row; with U = 0 and R C = V it is exactly
    log_softmax(x @ weight().T + b_r[r] + b_c[c]).
Stored: the float tables under `bits` (X_r, X_c; or W_r, b_r, W_c, b_c, U) and the allocation,
r(w) in ceil(log2 R) bits and c(w) in ceil(log2 C) bits per word (docs/methods.md: every stored map counts).
Init [ours]: balanced k-means of the pretrained rows into R rows of capacity C, then, within each
row, distinct columns by a balanced clustering of the residuals; the tables are the least-squares
fit for that allocation (alternating means), refined by a few reconstruction-cost reallocations.
Init, data: the same, with every word's squared error weighted by its frequency (`_linalg.row_weights`)
in the k-means costs, the means and the reallocations, so frequent words get the closer cells.
A softmax site fits [W | log f] (f = word counts, centred; 0 without counts) so b_r + b_c starts as
a unigram prior: build() does not see the site's bias.
Reallocation (the paper's bootstrap step): `reallocate(row_cost, col_cost)` re-matches words to
cells with the greedy priority-queue approximation of minimum-weight perfect matching used by the
official CNTK code, rows first (capacity C), then columns within each row, O(V sqrt(V) log V);
never exact Hungarian (pitfall 9); the new table is kept only if it costs no more. Costs come from
`nll_costs` (a softmax site's accumulated -log P_r, -log P_c) or `reconstruction_costs` (squared
error against a target matrix, exact with an optional R x C `cell_cost` for the cross term
2 <A_r, B_c>, so reallocating with it never increases that error).
"""

from __future__ import annotations

import heapq
import math
from typing import ClassVar
from dataclasses import dataclass, field

import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.errors import UserError
from autoshrink.methods._base import CompressedWeight, MethodConfig, calibrated, register, site_freqs
from autoshrink.methods._linalg import row_weights
from autoshrink.methods._storage import pack_uint, uint_bytes, unpack_uint
from autoshrink.sites import VOCAB_ROLES, Site

KMEANS_ITERS = 10  # balanced k-means rounds (rows, then columns); stops early once stable
FIT_ROUNDS = 5  # alternating least-squares rounds for the tables
REFINE_ROUNDS = 2  # reconstruction-cost reallocations after the k-means init


@dataclass(frozen=True)
class LightRNNConfig(MethodConfig):
    judged_after_training = True  # a one-shot proxy misjudges it (pitfall 12)
    method = "lightrnn"
    roles = VOCAB_ROLES
    rows: int = field(default=0, metadata={"help": "R: rows of the word table; 0 = ceil(sqrt(V)) (or ceil(V / cols))"})
    cols: int = field(
        default=0, metadata={"help": "C: columns of the word table; 0 = ceil(V / rows); rows * cols must be >= V"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the k-means initialisation of the allocation"})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rows", "cols", "seed"):
            self.check_int(name, 0)

    def grid(self, site: Site) -> tuple[int, int]:
        """(R, C) of the word table for this site."""
        v = site.shape[0]
        r, c = self.rows, self.cols
        if r == 0 and c == 0:
            r = math.isqrt(v - 1) + 1 if v > 1 else 1
        if r == 0:
            r = -(-v // c)
        if c == 0:
            c = -(-v // r)
        return r, c

    def check_site(self, site: Site) -> None:
        super().check_site(site)
        r, c = self.grid(site)
        if r * c < site.shape[0]:
            raise UserError(
                f"lightrnn: rows={r} x cols={c} = {r * c} cells cannot hold the {site.shape[0]} words of site {site.name!r}"
            )


def _bits(count: int) -> int:
    return (count - 1).bit_length()  # ceil(log2 count); 0 for a single row or column


def _table_shapes(site: Site, config: LightRNNConfig) -> dict[str, tuple[int, ...]]:
    r, c = config.grid(site)
    d = site.shape[1]
    if site.role == "embedding":
        return {"X_r": (r, d), "X_c": (c, d)}
    return {"W_r": (r, d), "b_r": (r,), "W_c": (c, d), "b_c": (c,), "U": (r, d)}


def greedy_assign(cost: torch.Tensor, capacity: torch.Tensor, group: torch.Tensor | None = None) -> torch.Tensor:
    """Items (rows of `cost`, n x k) to bins, at most capacity[b] items in bin b, greedily.

    The CNTK LightRNN approximation of a minimum-weight matching: a priority queue holds every
    unplaced item at its cheapest bin not yet found full; the cheapest entry is placed if its bin
    has room, else it is queued again at its next bin. O(n k log k + (n + moves) log n).
    With `group` (n,), capacity is (groups x k): items only compete within their group (the
    columns of each row), which one queue serves as well as a queue per group.
    """
    cost_np = cost.detach().double().cpu().numpy()
    n, k = cost_np.shape
    cap = capacity.reshape(-1, k).long()
    grp = np.zeros(n, dtype=np.int64) if group is None else group.cpu().numpy().astype(np.int64)
    short = np.bincount(grp, minlength=cap.shape[0]) > cap.sum(1).numpy()
    if short.any():
        raise ValueError(f"items of group {int(short.argmax())} do not fit in its capacity")
    room = cap.reshape(-1).tolist()
    order = np.argsort(cost_np, axis=1, kind="stable")
    sorted_cost = np.take_along_axis(cost_np, order, axis=1)
    heap = list(zip(sorted_cost[:, 0].tolist(), range(n), [0] * n))
    heapq.heapify(heap)
    out = np.empty(n, dtype=np.int64)
    while heap:
        _, i, j = heapq.heappop(heap)
        b = int(order[i, j])
        slot = int(grp[i]) * k + b
        if room[slot] > 0:
            room[slot] -= 1
            out[i] = b
        else:  # bins only fill up, so a full bin stays full: try the next one
            heapq.heappush(heap, (float(sorted_cost[i, j + 1]), i, j + 1))
    return torch.from_numpy(out)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T


def _group_mean(
    values: torch.Tensor, groups: torch.Tensor, count: int, old: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """(Weighted) mean of values per group; a group without members keeps its old value."""
    index = groups[:, None].expand(-1, values.shape[1])  # scatter_add_: index_add_ is slow on CPU here
    if weights is not None:
        values = values * weights[:, None]
    sums = torch.zeros(count, values.shape[1], dtype=values.dtype).scatter_add_(0, index, values)
    n = torch.bincount(groups, weights=weights, minlength=count).to(values.dtype)
    return torch.where(n[:, None] > 0, sums / n.clamp_min(1e-300)[:, None], old)


def _columns_within_rows(
    col_cost: torch.Tensor,
    cell_cost: torch.Tensor | None,
    row_of: torch.Tensor,
    rows: int,
    cols: int,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distinct columns for the words of each row: greedy matching on col_cost (V x C) + cell_cost[r]
    (the cell term times each word's weight when given)."""
    cell = None if cell_cost is None else cell_cost[row_of] * (1.0 if weights is None else weights[:, None])
    cost = col_cost if cell is None else col_cost + cell
    return greedy_assign(cost, torch.ones(rows, cols, dtype=torch.long), group=row_of)


def _fit_tables(a: torch.Tensor, row_of, col_of, p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor | None = None):
    """(Weighted) least squares a[w] ~= p[r(w)] + q[c(w)] by alternating means (each round lowers the error)."""
    for _ in range(FIT_ROUNDS):
        p = _group_mean(a - q[col_of], row_of, p.shape[0], p, weights)
        q = _group_mean(a - p[row_of], col_of, q.shape[0], q, weights)
    return p, q


def _split_costs(a: torch.Tensor, p: torch.Tensor, q: torch.Tensor, weights: torch.Tensor | None = None):
    """(row V x R, col V x C, cell R x C[, weights]) whose sum is exactly ||a_w - p_r - q_c||^2
    (times each word's weight, which the cell term gets where it is used)."""
    shift = q.mean(0)  # the same sums p_r + q_c, gauged so rows are compared with row centres
    p, q = p + shift, q - shift
    row, col = _sqdist(a, p), (q * q).sum(1) - 2 * a @ q.T
    if weights is None:
        return row, col, 2 * p @ q.T
    return row * weights[:, None], col * weights[:, None], 2 * p @ q.T, weights


@register(LightRNNConfig)
class LightRNNWeight(CompressedWeight):
    uses_site_bias = False

    def __init__(
        self,
        site: Site,
        config: LightRNNConfig,
        tables: dict[str, torch.Tensor],
        row_of: torch.Tensor,
        col_of: torch.Tensor,
    ):
        super().__init__(site, config)
        self.rows, self.cols = config.grid(site)
        self.names = tuple(_table_shapes(site, config))
        for name in self.names:
            setattr(self, name, nn.Parameter(tables[name].detach().clone().float()))
        self.register_buffer("row_of", row_of.long().clone())
        self.register_buffer("col_of", col_of.long().clone())
        self.uses_site_bias = self.keeps_site_bias(site)

    @classmethod
    def build(cls, weight, site, config, stats=None):
        config.check_site(site)
        v, d = site.shape
        rows, cols = config.grid(site)
        target = weight.detach().double()
        freqs = site_freqs(site, stats)
        if site.role == "softmax":
            f = torch.ones(v, dtype=torch.float64) if freqs is None else freqs.detach().double()
            seen = f[f > 0]  # unseen words count as half the rarest seen word, not log 0
            logf = f.clamp_min(float(seen.min()) / 2 if seen.numel() else 1.0).log()
            target = torch.cat([target, (logf - logf.mean())[:, None]], 1)
        # Data-aware: every word's error weighs by its frequency (plain: all words alike).
        weights = None if calibrated(config, stats) is None or freqs is None else row_weights(freqs)
        scale = torch.ones(v, dtype=torch.float64) if weights is None else weights
        g = torch.Generator().manual_seed(config.seed)
        # Rows: balanced k-means of the word vectors into R rows of capacity C.
        p = target[torch.randperm(v, generator=g)[:rows]]
        if p.shape[0] < rows:  # more rows than words: the spare rows stay empty
            p = torch.cat([p, p.new_zeros(rows - p.shape[0], p.shape[1])])
        row_of = None
        for _ in range(KMEANS_ITERS):
            new = greedy_assign(_sqdist(target, p) * scale[:, None], torch.full((rows,), cols))
            if row_of is not None and torch.equal(new, row_of):
                break
            row_of, p = new, _group_mean(target, new, rows, p, weights)
        # Columns: distinct cells within each row, clustering the residuals.
        resid = target - p[row_of]
        q = resid[torch.randperm(v, generator=g)[:cols]]
        if q.shape[0] < cols:
            q = torch.cat([q, q.new_zeros(cols - q.shape[0], q.shape[1])])
        col_of = None
        for _ in range(KMEANS_ITERS):
            new = _columns_within_rows(_sqdist(resid, q) * scale[:, None], None, row_of, rows, cols)
            if col_of is not None and torch.equal(new, col_of):
                break
            col_of, q = new, _group_mean(resid, new, cols, q, weights)
        p, q = _fit_tables(target, row_of, col_of, p, q, weights)
        for _ in range(REFINE_ROUNDS):  # each step keeps or lowers the reconstruction error
            row_of, col_of = _reallocated(_split_costs(target, p, q, weights), row_of, col_of, rows, cols)
            p, q = _fit_tables(target, row_of, col_of, p, q, weights)
        p, q = p.float(), q.float()
        if site.role == "embedding":
            tables = {"X_r": p, "X_c": q}
        else:
            tables = {"W_r": p[:, :d], "b_r": p[:, d], "W_c": q[:, :d], "b_c": q[:, d], "U": torch.zeros(rows, d)}
        return cls(site, config, tables, row_of, col_of)

    # --- forward ---------------------------------------------------------------------------
    def _pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The quantised row and column vector tables (X_r, X_c or W_r, W_c)."""
        if self.site.role == "embedding":
            return self.q(self.X_r), self.q(self.X_c)
        return self.q(self.W_r), self.q(self.W_c)

    def weight(self) -> torch.Tensor:
        first, second = self._pair()
        return first[self.row_of] + second[self.col_of]

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        first, second = self._pair()
        return first[self.row_of[ids]] + second[self.col_of[ids]]

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.site.role == "embedding":  # plain x @ weight().T without forming it
            first, second = self._pair()
            return (x @ first.T).index_select(-1, self.row_of) + (x @ second.T).index_select(-1, self.col_of)
        row_lp, col_lp = self._log_probs(x)
        cells = (row_lp.unsqueeze(-1) + col_lp).flatten(-2)  # (..., R C) log P(r) + log P(c | r)
        return cells.index_select(-1, self.row_of * self.cols + self.col_of)

    def _log_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log P_r (..., R) and log P_c(. | r) (..., R, C) of a softmax site."""
        w_r, b_r, w_c, b_c, u = (self.q(getattr(self, n)) for n in self.names)
        row_lp = torch.log_softmax(F.linear(x, w_r, b_r), -1)
        col_logits = F.linear(x, w_c, b_c).unsqueeze(-2) + u @ w_c.T  # W_c (h + U[r]) + b_c
        return row_lp, torch.log_softmax(col_logits, -1)

    # --- reallocation (the LightRNN bootstrap) --------------------------------------------
    REALLOCATE_UNTIL: ClassVar[float] = 0.5  # re-match words to cells at validations in the first half

    def on_validation(self, fraction, replay) -> str | None:
        """The paper's bootstrap round: each word's loss at every row and column, summed over
        the training text that `replay` yields, then words re-matched to cells."""
        if self.site.role != "softmax" or fraction >= self.REALLOCATE_UNTIL:
            return None
        totals = None
        for x, targets in replay():
            row, col = self.nll_costs(x.float().cpu(), targets.cpu())
            totals = [row, col] if totals is None else [totals[0] + row, totals[1] + col]
        if totals is None:
            return None
        self.last_reallocation = self.reallocate(*totals)
        return "LightRNN reallocation: word-cell loss {:.4g} -> {:.4g}".format(*self.last_reallocation)

    @torch.no_grad()
    def nll_costs(self, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-word loss tables of a softmax site over positions x (N x D) with next words targets (N):
        row_cost[w, r] = sum over w's occurrences of -log P_r(r), col_cost[w, c] = that of
        -log P_c(c | r(w)), the tables the paper accumulates over the training set."""
        if self.site.role != "softmax":
            raise ValueError("nll_costs needs a softmax site; use reconstruction_costs for embeddings")
        x, targets = x.reshape(-1, x.shape[-1]), targets.reshape(-1)
        row_lp, col_lp = self._log_probs(x)
        col_lp = col_lp[torch.arange(len(targets)), self.row_of[targets]]
        v = self.site.shape[0]
        row_cost = torch.zeros(v, self.rows).index_add_(0, targets, -row_lp)
        col_cost = torch.zeros(v, self.cols).index_add_(0, targets, -col_lp)
        return row_cost, col_cost

    @torch.no_grad()
    def reconstruction_costs(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row V x R, col V x C, cell R x C) cost tables with row[w, r] + col[w, c] + cell[r, c] =
        ||weight[w] - (A[r] + B[c])||^2 for the current tables A, B of weight(): reallocating
        with them never increases the error of weight() against `weight`."""
        first, second = self._pair()
        return _split_costs(weight.detach().double(), first.double(), second.double())

    @torch.no_grad()
    def reallocate(
        self, row_cost: torch.Tensor, col_cost: torch.Tensor, cell_cost: torch.Tensor | None = None
    ) -> tuple[float, float]:
        """Move words to cells minimising sum_w row_cost[w, r] + col_cost[w, c] (+ cell_cost[r, c]),
        greedily (rows, then columns within rows); the new table is kept only if it costs no more.
        Returns (cost before, cost after)."""
        costs = (row_cost.double(), col_cost.double(), None if cell_cost is None else cell_cost.double())
        before = _allocation_cost(costs, self.row_of, self.col_of)
        row_of, col_of = _reallocated(costs, self.row_of, self.col_of, self.rows, self.cols)
        self.row_of.copy_(row_of)
        self.col_of.copy_(col_of)
        return before, _allocation_cost(costs, row_of, col_of)

    # --- storage ---------------------------------------------------------------------------
    @classmethod
    def export_specs(cls, site, config, freqs=None):
        r, c = config.grid(site)
        v = site.shape[0]
        out = {}
        for name, shape in _table_shapes(site, config).items():
            out.update(cls.float_specs(name, shape, config))
        out["row_of"] = (torch.uint8, (uint_bytes(v, _bits(r)),))
        out["col_of"] = (torch.uint8, (uint_bytes(v, _bits(c)),))
        return out

    @classmethod
    def keeps_site_bias(cls, site) -> bool:
        # A softmax carries its own biases b_r, b_c; an embedding table used as a (tied) output
        # layer is a plain product, which keeps the site's bias.
        return site.role == "embedding"

    def export(self):
        out = {}
        for name in self.names:
            out.update(self.pack(name, getattr(self, name)))
        out["row_of"] = pack_uint(self.row_of, _bits(self.rows))
        out["col_of"] = pack_uint(self.col_of, _bits(self.cols))
        return out

    @classmethod
    def from_export(cls, tensors, site, config):
        config.check_site(site)
        r, c = config.grid(site)
        v = site.shape[0]
        tables = {n: cls.unpack(tensors, n, s, config) for n, s in _table_shapes(site, config).items()}
        return cls(
            site,
            config,
            tables,
            unpack_uint(tensors["row_of"], _bits(r), v),
            unpack_uint(tensors["col_of"], _bits(c), v),
        )


def _allocation_cost(costs, row_of, col_of) -> float:
    row_cost, col_cost, cell_cost, *weights = costs
    words = torch.arange(len(row_of))
    total = row_cost[words, row_of].sum() + col_cost[words, col_of].sum()
    if cell_cost is not None:
        cell = cell_cost[row_of, col_of]
        total = total + (cell * weights[0] if weights else cell).sum()
    return float(total)


def _reallocated(costs, row_of, col_of, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy re-matching of words to cells, or the current one if that costs less."""
    row_cost, col_cost, cell_cost, *weights = costs
    new_rows = greedy_assign(row_cost, torch.full((rows,), cols))
    new_cols = _columns_within_rows(col_cost, cell_cost, new_rows, rows, cols, weights[0] if weights else None)
    if _allocation_cost(costs, new_rows, new_cols) <= _allocation_cost(costs, row_of, col_of):
        return new_rows, new_cols
    return row_of.clone(), col_of.clone()
