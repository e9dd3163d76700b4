"""Error-compensating rounding and pruning (GPTQ / OBS / SparseGPT), shared by every method.

A matrix W (rows x cols) that multiplies inputs with second moment H (cols x cols) is changed
one column at a time, left to right; the error a column's change makes is pushed onto the
columns not yet done through H^-1 (Frantar et al., GPTQ 2022; SparseGPT 2023, from OBS):

    delta = (w_q - new w_q) / [U]_qq,   W[:, q+1:] -= delta [U]_{q, q+1:},

with U the upper Cholesky factor of H^-1 (the numerically stable form of the GPTQ code). What
changes a column is the only difference between the two uses:
  - `gptq`: round it to the stored k-bit grid (`_storage`'s affine min-max per row or group);
  - `obs_prune`: zero the entries outside a given mask (SparseGPT's update for a fixed mask).
`gptq_rows` rounds the rows of a tensor sequentially instead (its error coupled between rows by
a moment over rows), for a factor whose *output side* is what is known (an embedding's V).

GPTQ rounds to a grid fixed when a group starts; the export recomputes the grid from the stored
values' min and max, so the group's smallest and largest entries (at the group's start) are
pinned to the lowest and highest codes: the stored values then reproduce the grid exactly, and
`stored_values` of the result is the result (no second rounding).
"""

from __future__ import annotations

import torch

from autoshrink.methods._storage import affine_grid, stored_values

DAMP = 0.01  # GPTQ's dampening: 1% of the mean diagonal of H added before inverting
BLOCK = 128  # columns per lazy batch update (GPTQ's B)
ACT_ORDER = True  # one grid per row: round the columns of the largest inputs first (GPTQ's act-order)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U upper with U^T U = (H + damp)^-1, dead columns whose input is always zero)."""
    h = h.detach().double().clone()
    dead = h.diagonal() <= 0
    h[dead, dead] = 1.0
    h += damp * float(h.diagonal().mean()) * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    chol, info = torch.linalg.cholesky_ex(h)
    while int(info):
        h += float(h.diagonal().mean()) * 0.1 * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        chol, info = torch.linalg.cholesky_ex(h)
    hinv = torch.cholesky_inverse(chol)
    return torch.linalg.cholesky(hinv, upper=True), dead


def _sequential(w: torch.Tensor, h: torch.Tensor, change, damp: float, block: int) -> torch.Tensor:
    """W with every column changed by `change(j, rest)` (rest = the block's columns j.. as they
    are now; it returns the new column j), each change's error compensated on later columns."""
    u, dead = _inverse_cholesky(h, damp)
    work = w.detach().double().clone()
    work[:, dead] = 0.0
    out = torch.empty_like(work)
    cols = work.shape[1]
    for start in range(0, cols, block):
        end = min(start + block, cols)
        part = work[:, start:end].clone()
        errors = torch.zeros_like(part)
        for i in range(end - start):
            new = change(start + i, part[:, i:])
            out[:, start + i] = new
            err = (part[:, i] - new) / u[start + i, start + i]
            part[:, i:] -= err[:, None] * u[start + i, start + i : end][None, :]
            errors[:, i] = err
        work[:, end:] -= errors @ u[start:end, end:]
    return out


def gptq(
    w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int = 0, damp: float = DAMP, _ordered: bool = False
) -> torch.Tensor:
    """Stored values (float32, on the k-bit grid, `stored_values`-stable) of W (rows x cols) for
    inputs of moment H (cols x cols). At 16 or 32 bits W itself."""
    if bits >= 16:
        return w.detach().float().clone()
    rows, cols = w.shape
    width = cols if group_size <= 0 else min(group_size, cols)
    if (
        width == cols and ACT_ORDER and not _ordered
    ):  # one grid per row: columns may go in any order, the largest inputs first
        order = torch.argsort(h.detach().diagonal(), descending=True, stable=True)
        back = torch.argsort(order)
        return gptq(w[:, order], h[order][:, order], bits, cols, damp, _ordered=True)[:, back]

    block = width * max(1, BLOCK // width) if width < cols else BLOCK  # groups never cross a block
    levels = 2**bits - 1
    grid: dict[str, torch.Tensor] = {}
    everything = torch.arange(rows, device=w.device)

    def round_column(j: int, rest: torch.Tensor) -> torch.Tensor:
        offset = j % width
        if offset == 0:  # a new group: its grid from the values it has now
            group = rest[:, :width].float()
            if width == cols and j == 0:
                group = w.detach().float()  # one group per row: the whole row, before any update
            scale, lo = affine_grid(group[:, None, :], bits)
            grid.update(
                scale=scale.reshape(-1).float(),
                lo=lo.reshape(-1).float(),
                low_at=group.argmin(1),
                high_at=group.argmax(1),
                spread=group.amax(1) > group.amin(1),
            )
        col = rest[:, 0]
        codes = torch.clamp(torch.round((col.float() - grid["lo"]) / grid["scale"]), 0, levels)
        codes[everything[grid["low_at"] == offset]] = 0  # pin the extremes: the grid is reproduced
        codes[everything[(grid["high_at"] == offset) & grid["spread"]]] = levels
        return (codes * grid["scale"] + grid["lo"]).double()

    return _sequential(w, h, round_column, damp, block).float()


def gptq_rows(w: torch.Tensor, g: torch.Tensor, bits: int, group_size: int = 0, damp: float = DAMP) -> torch.Tensor:
    """Stored values of W whose rows are rounded one at a time (each to its own grid), the error
    coupled between rows by g (rows x rows): the output-side form of `gptq`."""
    if bits >= 16:
        return w.detach().float().clone()

    def round_row(j: int, rest: torch.Tensor) -> torch.Tensor:
        return stored_values(rest[:, 0].float()[None, :], bits, group_size)[0].double()

    return _sequential(w.T, g, round_row, damp, BLOCK).T.float().contiguous()


def obs_prune(w: torch.Tensor, mask: torch.Tensor, h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """W with the entries outside `mask` zeroed and the kept ones moved to compensate on inputs
    of moment H (SparseGPT's update for a fixed mask); float32."""
    keep = mask.to(torch.float64)

    def zero_pruned(j: int, rest: torch.Tensor) -> torch.Tensor:
        return rest[:, 0] * keep[:, j]

    return _sequential(w, h, zero_pruned, damp, BLOCK).float()


def output_error(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W - W_hat) H (W - W_hat)^T): the summed squared output error on inputs of moment H."""
    e = w.detach().double() - w_hat.detach().double()
    return float(((e @ h.double()) * e).sum())


def column_norms(h: torch.Tensor) -> torch.Tensor:
    """||X_j|| per input j (up to the token count): sqrt of H's diagonal (Wanda's activation norm)."""
    return h.detach().double().diagonal().clamp_min(0).sqrt()


def gptq_pair(
    u: torch.Tensor,
    v: torch.Tensor,
    bits: int,
    group_size: int,
    moment: torch.Tensor | None,
    row_weights: torch.Tensor | None = None,
    u_groups: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored values of a factor pair W ~= U V, the factor nearest the input first.

    With an input moment H (a matmul site): V by GPTQ on H, then U by GPTQ on the moment of its
    own input V_hat x, V_hat H V_hat^T. Without one (an embedding: rows are looked up, weighted
    by word frequency w): V's rows by `gptq_rows` on U^T diag(w) U, then each row of U by GPTQ
    on V_hat V_hat^T. `u_groups` > 0: U is stored transposed (its columns in groups of that many
    rows share a grid), so its columns are rounded one at a time on the same moment instead
    (`gptq_rows` of U^T). At 16 or 32 bits the factors are returned as they are."""
    if bits >= 16:
        return u, v
    if moment is not None:
        v_hat = gptq(v, moment, bits, group_size)
        vd = v_hat.double()
        u_moment = vd @ moment.double() @ vd.T
    else:
        ud = u.double()
        weighted = ud if row_weights is None else ud * row_weights.double()[:, None]
        v_hat = gptq_rows(v, weighted.T @ ud, bits, group_size)
        vd = v_hat.double()
        u_moment = vd @ vd.T
    if u_groups > 0:
        return gptq_rows(u.T, u_moment, bits, u_groups).T.contiguous(), v_hat
    return gptq(u, u_moment, bits, group_size), v_hat
