"""GroupReduce: block-wise weighted low rank for the embedding and softmax (the `groupreduce` method).

Chen, Si, Li, Chelba, Hsieh, "GroupReduce: Block-Wise Low-Rank Approximation for Neural Language
Model Shrinking", NeurIPS 2018 (arXiv 1806.06950); docs/methods.md, GroupReduce.

Words (rows) are sorted by frequency, descending, and cut into `blocks` equal-size blocks V_i
(sizes differ by at most one, the larger ones first). Block i stores A_i ~= U_i V_i^T with rank

    r_i = min(|V_i|, D, max(r_min, floor(r_min * fbar_i / fbar_c)))

where fbar_i is the mean frequency of block i and c the rarest block, so the rarest block gets r_min
(`rank`). A block with r_i >= D |V_i| / (|V_i| + D) costs at least as much as its rows, and is
stored dense. Each block is fitted by a weighted SVD minimising sum_j w_j |a_j - u_j V_i^T|^2 with
w = f^alpha: scale the rows by sqrt(w), truncate the SVD U' S V'^T, and set U_i = diag(1/sqrt(w)) U' S^1/2,
V_i = V' S^1/2 (the sqrt(S) split keeps both factors in similar ranges for quantisation).

Refinement (`refine` rounds, k-subspaces style) keeps every block's size, hence its rank and bytes:
each move swaps two words between two blocks, chosen greedily by the drop in weighted projection
error w_j |a_j - P_i a_j|^2 under the current bases, at most 10% of the words per round; the changed
blocks are then refitted. Both steps can only lower the weighted error. It stops early when fewer
than max(1, V/100) words moved.

Stored (export names): per block `b{i}.U` (|V_i| x r_i) and `b{i}.V` (r_i x D, i.e. V_i^T) or
`b{i}.W` (|V_i| x D dense rows), at the config's bits; plus `perm`, the word at each stored
position, bit-packed at ceil(log2 V) bits, only when the positions are not the row order (freqs
given and not already sorted descending, or refine > 0 with more than one block).

Frequencies are not in a config: `stored_bytes(site, config, freqs)` takes them (as every
method's does), `build` from its statistics. Without them the rank allocation assumes the rows
are already in frequency order with a Zipf profile f_j = 1/(j+1) [ours]; `build` then fits with
uniform weights.

Init, data (docs/methods.md, data-aware initialisation): on a softmax the blocks are fitted in the inputs' whitened
space (rows a_j L, H = L L^T the calibrated moment of the top hidden state), so a block's error is
sum_j w_j |(a_j - u_j V_i^T) L|^2, the frequency-weighted logit error on the calibration inputs;
V_i is un-whitened (V_i^T L^-1) at the end, and the refinement compares words in that space too.
Below 16 bits every block's factors are GPTQ-rounded (`_gptq.gptq_pair`: on a softmax V_i on the
inputs' moment, then U_i; on an embedding V_i's rows on the w-weighted U_i, then U_i), dense
blocks of a softmax by GPTQ (an embedding's rows round to nearest).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from autoshrink.errors import UserError
from autoshrink.methods._base import CompressedWeight, MethodConfig, calibrated, register, site_freqs
from autoshrink.methods._gptq import gptq, gptq_pair
from autoshrink.methods._linalg import Metric
from autoshrink.methods._storage import U_GROUPS_HELP, groups_per_row, pack_uint, uint_bytes, unpack_uint
from autoshrink.sites import VOCAB_ROLES, Site

MOVE_FRACTION = 0.1  # most words moved per refinement round (the DiscBlock code's default)
MIN_MOVED_FRACTION = 0.01  # stop refining when fewer than max(1, this * V) words moved
AUTO_RANK_DIVISOR = 16  # rank 0: r_min = D / 16 (16 on a 256-dim table)


@dataclass(frozen=True)
class GroupReduceConfig(MethodConfig):
    method = "groupreduce"
    size_knob = "rank"
    roles = VOCAB_ROLES
    blocks: int = field(
        default=4, metadata={"help": "number of equal-size blocks of words, sorted by frequency (c >= 1)"}
    )
    rank: int = field(
        default=0,
        metadata={
            "help": "rank of the rarest block (r_min); other blocks scale it by their mean frequency; 0 = D / 16 (at least 1)"
        },
    )
    refine: int = field(
        default=0,
        metadata={
            "help": "rounds of k-subspace refinement: words swap blocks where that lowers the weighted error (sizes and "
            "bytes kept; 0 = frequency blocks only)"
        },
    )
    alpha: float = field(
        default=1.0, metadata={"help": "weighted-SVD row weights w = freq^alpha, in [0, 2] (0 = unweighted)"}
    )
    u_groups: int = field(default=0, metadata={"help": "each block's " + U_GROUPS_HELP})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_int("blocks", 1)
        self.check_int("rank", 0)
        self.check_int("refine", 0)
        self.check_range("alpha", 0.0, 2.0)
        self.check_int("u_groups", 0)

    def min_rank(self, site: Site) -> int:
        """r_min for this site: `rank`, or D / AUTO_RANK_DIVISOR when it is 0."""
        return self.rank or max(1, site.shape[1] // AUTO_RANK_DIVISOR)

    def check_site(self, site: Site) -> None:
        super().check_site(site)
        if self.blocks > site.shape[0]:
            raise UserError(
                f"groupreduce: blocks={self.blocks} exceeds the {site.shape[0]} words of site {site.name!r}"
            )


class Block(NamedTuple):
    size: int
    rank: int
    dense: bool


def _block_sizes(v: int, c: int) -> list[int]:
    return [v // c + (1 if i < v % c else 0) for i in range(c)]


def _check_freqs(freqs: torch.Tensor | None, site: Site) -> torch.Tensor | None:
    if freqs is None:
        return None
    f = torch.as_tensor(freqs).detach().double().cpu().reshape(-1)
    if f.numel() != site.shape[0] or not torch.isfinite(f).all() or (f < 0).any():
        raise UserError(
            f"groupreduce: site {site.name!r} needs {site.shape[0]} finite non-negative word counts, "
            f"got {f.numel()} values"
        )
    return f


def _order(freqs: torch.Tensor | None, v: int) -> torch.Tensor:
    """Words by frequency, descending; ties and missing freqs keep row order."""
    if freqs is None:
        return torch.arange(v)
    return torch.sort(freqs, descending=True, stable=True).indices


def _needs_perm(config: GroupReduceConfig, freqs: torch.Tensor | None) -> bool:
    if config.refine > 0 and config.blocks > 1:
        return True  # refinement may move words: the positions are always stored then
    return freqs is not None and bool((freqs[:-1] < freqs[1:]).any())


def _perm_bits(v: int) -> int:
    return max(1, (v - 1).bit_length())  # ceil(log2 V)


def _stored_pair(
    u: torch.Tensor, vt: torch.Tensor, config: GroupReduceConfig, metric: Metric, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's factors; data-aware below 16 bits GPTQ-rounded (`_gptq.gptq_pair`)."""
    if not config.data_aware or config.bits >= 16:
        return u, vt
    return gptq_pair(u.float(), vt.float(), config.bits, config.group_size, metric.moment, w, config.u_groups)


def _stored_rows(rows: torch.Tensor, config: GroupReduceConfig, metric: Metric) -> tuple[torch.Tensor]:
    """A dense block's rows; GPTQ-rounded where the inputs are known (a softmax)."""
    if metric.moment is None or config.bits >= 16:
        return (rows,)
    return (gptq(rows.float(), metric.moment, config.bits, config.group_size),)


def _block_specs(site: Site, config: GroupReduceConfig, blocks: list[Block], permuted: bool) -> dict:
    """Names, dtypes and shapes of the export: each block's W or U and V, then the map."""
    v, d = site.shape
    out = {}
    for i, blk in enumerate(blocks):
        if blk.dense:
            out.update(CompressedWeight.float_specs(f"b{i}.W", (blk.size, d), config))
        else:
            out.update(CompressedWeight.factor_specs(f"b{i}.U", (blk.size, blk.rank), config, config.u_groups))
            out.update(CompressedWeight.float_specs(f"b{i}.V", (blk.rank, d), config))
    if permuted:
        out["perm"] = (torch.uint8, (uint_bytes(v, _perm_bits(v)),))
    return out


@register(GroupReduceConfig)
class GroupReduceWeight(CompressedWeight):
    def __init__(
        self,
        site: Site,
        config: GroupReduceConfig,
        blocks: list[Block],
        parts: list[tuple[torch.Tensor, ...]],
        order: torch.Tensor | None,
    ):
        super().__init__(site, config)
        self.blocks = blocks
        self.factors = nn.ParameterDict()
        for i, (blk, tensors) in enumerate(zip(blocks, parts)):
            names = ("W",) if blk.dense else ("U", "V")
            for name, t in zip(names, tensors):
                self.factors[f"b{i}_{name}"] = nn.Parameter(t.detach().clone().float())
        ends = torch.tensor([b.size for b in blocks]).cumsum(0)
        self.register_buffer("ends", ends, persistent=False)
        self.register_buffer("starts", ends - torch.tensor([b.size for b in blocks]), persistent=False)
        self.permuted = order is not None
        if order is not None:  # order[position] = word; where[word] = position
            self.register_buffer("order", order.long().clone())
            self.register_buffer("where", torch.argsort(self.order))

    # --- allocation and fitting ----------------------------------------------------------
    @staticmethod
    def allocation(site: Site, config: GroupReduceConfig, freqs: torch.Tensor | None = None) -> list[Block]:
        """Size, rank and dense flag of every block, from the shape, the knobs and the word counts."""
        config.check_site(site)
        v, d = site.shape
        f = _check_freqs(freqs, site)
        if f is None:
            f = 1.0 / torch.arange(1, v + 1, dtype=torch.float64)  # Zipf prior over row order
        f = f[_order(f, v)]
        if f.sum() <= 0:
            f = torch.ones(v, dtype=torch.float64)
        f = f / f.mean()
        sizes = _block_sizes(v, config.blocks)
        means = [chunk.mean().item() for chunk in torch.split(f, sizes)]
        means[-1] = max(means[-1], 1e-6)  # a rarest block of unseen words: the others hit their caps
        out = []
        for n, mean in zip(sizes, means):
            r_min = config.min_rank(site)
            proportional = math.floor(r_min * mean / means[-1] + 1e-9)  # epsilon: rescaled counts give equal ranks
            r = min(n, d, max(r_min, proportional))
            out.append(Block(n, r, r * (n + d) >= d * n))
        return out

    @staticmethod
    def _fit(a: torch.Tensor, w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted rank-r fit of rows a: (U, V^T with sqrt(S) split, orthonormal basis D x r)."""
        s = w.sqrt()
        u, sig, vt = torch.linalg.svd(a * s[:, None], full_matrices=False)
        u, sig, vt = u[:, :r], sig[:r], vt[:r]
        root = sig.sqrt()
        return u * root / s[:, None], root[:, None] * vt, vt.T

    @staticmethod
    def _errors(a: torch.Tensor, w: torch.Tensor, bases: list[torch.Tensor | None]) -> torch.Tensor:
        """c x V weighted projection errors w_j |a_j - P_i a_j|^2 (0 in a dense block)."""
        norms = (a * a).sum(1)  # |a - P a|^2 = |a|^2 - |a B|^2 for an orthonormal basis B (float64)
        rows = [
            torch.zeros_like(norms) if basis is None else w * (norms - ((a @ basis) ** 2).sum(1)).clamp_min(0)
            for basis in bases
        ]
        return torch.stack(rows)

    @classmethod
    def _swaps(cls, err: torch.Tensor, block_of: torch.Tensor, limit: int) -> list[tuple[int, int]]:
        """Pairs of words (positions) to swap between blocks, the largest error drops first."""
        c = err.shape[0]
        idx = torch.arange(err.shape[1])
        tiny = 1e-12 * float(err.sum())
        gains, firsts, seconds = [], [], []
        for b in range(c):
            for i in range(b + 1, c):
                in_b, in_i = idx[block_of == b], idx[block_of == i]
                gb, ob = torch.sort(err[b, in_b] - err[i, in_b], descending=True)  # gain of each word of b going to i
                gi, oi = torch.sort(err[i, in_i] - err[b, in_i], descending=True)
                k = min(len(gb), len(gi))
                total = gb[:k] + gi[:k]  # top-with-top pairing maximises this pair of blocks' summed gain
                keep = int((total > tiny).sum())  # total is non-increasing
                gains.append(total[:keep])
                firsts.append(in_b[ob[:keep]])
                seconds.append(in_i[oi[:keep]])
        if not gains:
            return []
        best = torch.argsort(torch.cat(gains), descending=True, stable=True)
        used: set[int] = set()
        swaps = []
        for j, k in zip(torch.cat(firsts)[best].tolist(), torch.cat(seconds)[best].tolist()):
            if 2 * len(swaps) + 2 > limit:
                break
            if j not in used and k not in used:
                used.update((j, k))
                swaps.append((j, k))
        return swaps

    @classmethod
    def build(cls, weight, site, config, stats=None):
        freqs = site_freqs(site, stats)
        blocks = cls.allocation(site, config, freqs)
        v, d = site.shape
        f = _check_freqs(freqs, site)
        order = _order(f, v)
        original = weight.detach().double().cpu()[order]  # rows in position order
        metric = Metric.of(site, calibrated(config, stats), rows=False)  # the row weights are w below
        a = metric.whiten(original)  # data-aware: fitted in the inputs' whitened space (a L)
        if f is None:
            w = torch.ones(v, dtype=torch.float64)
        else:
            w = f[order] ** config.alpha
            w = w + 1e-6 * w.mean() if w.mean() > 0 else torch.ones(v, dtype=torch.float64)
        block_of = torch.repeat_interleave(torch.arange(len(blocks)), torch.tensor([b.size for b in blocks]))
        fits = [None] * len(blocks)

        def refit(i: int) -> None:
            rows = block_of == i
            fits[i] = None if blocks[i].dense else cls._fit(a[rows], w[rows], blocks[i].rank)

        for i in range(len(blocks)):
            refit(i)
        limit = max(2, math.ceil(MOVE_FRACTION * v))
        for _ in range(config.refine if len(blocks) > 1 else 0):
            err = cls._errors(a, w, [None if fit is None else fit[2] for fit in fits])
            swaps = cls._swaps(err, block_of, limit)
            if swaps:
                j, k = torch.tensor(swaps).T
                changed = set(block_of[j].tolist()) | set(block_of[k].tolist())
                perm = torch.arange(v)  # exchange the two words' positions
                perm[j], perm[k] = k, j
                a, w, order, original = a[perm], w[perm], order[perm], original[perm]
                for i in changed:
                    refit(i)
            if 2 * len(swaps) < max(1, MIN_MOVED_FRACTION * v):
                break
        parts = []
        for i, blk in enumerate(blocks):
            rows = block_of == i
            if blk.dense:
                parts.append(_stored_rows(original[rows], config, metric))
            else:
                u, vt = fits[i][:2]
                parts.append(_stored_pair(u, metric.unwhiten_cols(vt), config, metric, w[rows]))
        keep = order if _needs_perm(config, f) else None
        return cls(site, config, blocks, [tuple(t.float() for t in p) for p in parts], keep)

    # --- forward -------------------------------------------------------------------------
    def _block(self, i: int) -> tuple[torch.Tensor, ...]:
        if self.blocks[i].dense:
            return (self.q(self.factors[f"b{i}_W"]),)
        return self.q_factor(self.factors[f"b{i}_U"], self.config.u_groups), self.q(self.factors[f"b{i}_V"])

    def weight(self) -> torch.Tensor:
        rows = [p[0] if len(p) == 1 else p[0] @ p[1] for p in map(self._block, range(len(self.blocks)))]
        w = torch.cat(rows)
        return w[self.where] if self.permuted else w

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        outs = []
        for i in range(len(self.blocks)):
            part = self._block(i)
            outs.append(flat @ part[0].T if len(part) == 1 else (flat @ part[1].T) @ part[0].T)
        y = torch.cat(outs, dim=1)  # logits in position order
        if self.permuted:
            y = y[:, self.where]
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        pos = self.where[flat] if self.permuted else flat
        block = torch.bucketize(pos, self.ends, right=True)
        picked, rows = [], []
        for i in range(len(self.blocks)):
            sel = (block == i).nonzero(as_tuple=True)[0]
            if sel.numel() == 0:
                continue
            local = pos[sel] - self.starts[i]
            part = self._block(i)
            rows.append(part[0][local] if len(part) == 1 else part[0][local] @ part[1])
            picked.append(sel)
        d = self.site.shape[1]
        if not rows:
            return torch.zeros(*ids.shape, d, device=ids.device)
        out = rows[0].new_zeros(flat.numel(), d).index_copy(0, torch.cat(picked), torch.cat(rows))
        return out.reshape(*ids.shape, d)

    # --- storage -------------------------------------------------------------------------
    @classmethod
    def export_specs(cls, site, config, freqs: torch.Tensor | None = None):
        """What export writes; `freqs` (the word counts `build` gets) decide the ranks and the map."""
        blocks = cls.allocation(site, config, freqs)
        return _block_specs(site, config, blocks, _needs_perm(config, _check_freqs(freqs, site)))

    def tensor_specs(self):
        return _block_specs(self.site, self.config, self.blocks, self.permuted)

    def export(self):
        out = {}
        for i, blk in enumerate(self.blocks):
            if blk.dense:
                out.update(self.pack(f"b{i}.W", self.factors[f"b{i}_W"]))
            else:
                out.update(self.pack_factor(f"b{i}.U", self.factors[f"b{i}_U"], self.config.u_groups))
                out.update(self.pack(f"b{i}.V", self.factors[f"b{i}_V"]))
        if self.permuted:
            out["perm"] = pack_uint(self.order, _perm_bits(self.site.shape[0]))
        return out

    @classmethod
    def from_export(cls, tensors, site, config):
        v, d = site.shape
        blocks, parts = [], []
        for i, n in enumerate(_block_sizes(v, config.blocks)):
            if f"b{i}.W" in tensors or f"b{i}.W.codes" in tensors:
                blocks.append(Block(n, d, True))
                parts.append((cls.unpack(tensors, f"b{i}.W", (n, d), config),))
                continue
            # The rank is the row count of V^T: its shape at 16/32 bits, else its number of scales.
            r = (
                tensors[f"b{i}.V"].shape[0]
                if config.bits >= 16
                else tensors[f"b{i}.V.scale"].numel() // groups_per_row(d, config.group_size)
            )
            blocks.append(Block(n, r, False))
            u = cls.unpack_factor(tensors, f"b{i}.U", (n, r), config, config.u_groups)
            parts.append((u, cls.unpack(tensors, f"b{i}.V", (r, d), config)))
        order = unpack_uint(tensors["perm"], _perm_bits(v), v) if "perm" in tensors else None
        return cls(site, config, blocks, parts, order)
