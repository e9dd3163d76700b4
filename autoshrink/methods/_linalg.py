"""Linear algebra shared by the methods: thin SVD, and the error a site's inputs make matter.

Data-aware initialisation (docs/methods.md, data-aware initialisation) fits a compressed W_hat for the error it causes
on the site's real inputs, not for ||W - W_hat||. With the calibration statistics of a site that
error is one weighted Frobenius norm,

    err(W_hat) = ||D (W - W_hat) L||_F^2,   D = diag(w^1/2),  L L^T = H + eps I,

where H = E[x x^T] is the input second moment (so ||(W - W_hat) L||^2 = E||(W - W_hat) x||^2, the
output error on the calibration inputs) and w are the rows' word weights (frequencies) on
vocabulary matrices: an embedding's input is a one-hot word, whose moment is exactly diag(f), so
its error is the row-weighted one; a softmax has both (its logit errors weighted by how often
each word is the target). `Metric` holds D and L; `weighted_low_rank` is the closed-form best
rank-r fit under it (SVD-LLM's whitened SVD with row weights: Eckart-Young on D W L).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autoshrink.sites import Site, SiteStats

WHITEN_DAMP = 1e-4  # eps = this * mean(diag H): keeps L invertible when inputs are (near) degenerate
ROW_FLOOR = 1e-3  # unseen words weigh this fraction of the mean word, so D stays invertible
GRADIENT_ROWS = True  # rows of other matrices weighted by the loss gradient's second moment (FWSVD)
FULL_OUTPUT_WEIGHTS = True  # ... by its full moment E[g g^T] where calibration kept it


def thin_svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.linalg.svd(a, full_matrices=False), computed on the tall orientation: on the CPU a
    wide matrix was measured ~20x slower than its transpose (325 x 20000: 30 s vs 1.5 s).
    float64 input stays float64; anything else is computed in float32."""
    a = a.detach()
    a = a if a.dtype == torch.float64 else a.float()
    if a.shape[0] >= a.shape[1]:
        return torch.linalg.svd(a, full_matrices=False)
    u, s, vh = torch.linalg.svd(a.T, full_matrices=False)
    return vh.T, s, u.T


def psd_cholesky(h: torch.Tensor, damp: float | None = None) -> torch.Tensor:
    """Lower Cholesky factor of h + damp * mean(diag h) I (float64; damp WHITEN_DAMP by
    default), damped further if needed."""
    damp = WHITEN_DAMP if damp is None else damp
    h = h.detach().double()
    h = (h + h.T) / 2
    scale = float(h.diagonal().mean()) if h.numel() else 1.0
    scale = scale if scale > 0 else 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for extra in (1.0, 10.0, 100.0, 1e4):
        chol, info = torch.linalg.cholesky_ex(h + damp * extra * scale * eye)
        if int(info) == 0:
            return chol
    return torch.sqrt(torch.tensor(scale, dtype=h.dtype)) * eye


def row_weights(freqs: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Word weights w = f^alpha, mean 1, unseen words at ROW_FLOOR of the mean (float64)."""
    f = torch.as_tensor(freqs).detach().double().reshape(-1).clamp_min(0)
    if f.sum() <= 0:
        return torch.ones_like(f)
    f = f / f.mean()
    w = (f + ROW_FLOOR) ** alpha
    return w / w.mean()


@dataclass(frozen=True)
class Metric:
    """err(W_hat) = ||D (W - W_hat) L||_F^2 for one site; None parts are identities (plain)."""

    row: torch.Tensor | None = None  # (m,) sqrt of the row weights: D = diag(row)
    chol: torch.Tensor | None = None  # (n, n) lower L with L L^T = H + eps I
    # (m, m) lower K with K K^T = G (the outputs' gradient moment): then the error is
    # ||K^T (W - W_hat) L||^2 and `row` is only its diagonal's root (for per-row uses).
    left: torch.Tensor | None = None

    @classmethod
    def of(cls, site: Site, stats: SiteStats | None, rows: bool = True, inputs: bool = True) -> "Metric":
        """The metric a site's statistics give: input whitening where a moment was recorded
        (`inputs`), frequency rows on vocabulary sites with word counts (`rows`)."""
        if stats is None:
            return cls()
        row = None
        if rows and site.is_vocab and stats.freqs is not None and len(stats.freqs) == site.shape[0]:
            row = row_weights(stats.freqs).sqrt()
        elif rows and GRADIENT_ROWS and stats.grad_sq is not None and len(stats.grad_sq) == site.shape[0]:
            row = row_weights(stats.grad_sq).sqrt()
        left = None
        if row is not None and not site.is_vocab and FULL_OUTPUT_WEIGHTS and stats.grad_moment is not None:
            g = stats.grad_moment.double()
            left = psd_cholesky(g / g.diagonal().mean().clamp_min(1e-300))
        chol = None
        if inputs and stats.moment is not None and stats.moment.shape == (site.shape[1], site.shape[1]):
            chol = psd_cholesky(stats.moment)
        return cls(row, chol, left)

    @property
    def plain(self) -> bool:
        return self.row is None and self.chol is None

    @property
    def moment(self) -> torch.Tensor | None:
        """H + eps I (n x n), or None without inputs."""
        return None if self.chol is None else self.chol @ self.chol.T

    def input_norms(self) -> torch.Tensor | None:
        """sqrt(diag H) (n,): the RMS of each input (Wanda's activation norm), or None."""
        return None if self.chol is None else self.chol.norm(dim=1)

    def saliency(self, w: torch.Tensor) -> torch.Tensor:
        """|W_ij| scaled by its row's weight and its input's RMS: what an entry adds to the error
        when it alone is dropped (Wanda's score; plain: |W|)."""
        score = w.detach().abs().double()
        if self.row is not None:
            score = score * self.row.to(score.device)[:, None]
        norms = self.input_norms()
        if norms is not None:
            score = score * norms.to(score.device)[None, :]
        return score.float()

    def whiten(self, w: torch.Tensor) -> torch.Tensor:
        """D W L (float64)."""
        a = w.detach().double()
        if self.left is not None:
            a = self.left.T.to(a.device) @ a
        elif self.row is not None:
            a = a * self.row.to(a.device)[:, None]
        if self.chol is not None:
            a = a @ self.chol.to(a.device)
        return a

    def unwhiten_rows(self, u: torch.Tensor) -> torch.Tensor:
        """D^-1 u (K^-T u) for a left factor u (m x r)."""
        if self.left is not None:
            return torch.linalg.solve_triangular(self.left.T.to(u.device), u.double(), upper=True)
        return u if self.row is None else u / self.row.to(u.device)[:, None]

    def unwhiten_cols(self, v: torch.Tensor) -> torch.Tensor:
        """v L^-1 for a right factor v (r x n)."""
        if self.chol is None:
            return v
        # v L^-1 = (L^-T v^T)^T: one triangular solve with L^T (upper).
        return torch.linalg.solve_triangular(self.chol.T.to(v.device), v.T, upper=True).T

    def select_rows(self, rows: torch.Tensor) -> "Metric":
        """The metric of a subset of the rows (a GroupReduce block)."""
        if self.left is not None:
            raise ValueError("a metric with full output weights has no row subsets")
        return Metric(None if self.row is None else self.row[rows], self.chol)

    def error(self, w: torch.Tensor, w_hat: torch.Tensor) -> float:
        """||D (W - W_hat) L||_F^2."""
        return float(self.whiten(w.detach().double() - w_hat.detach().double()).square().sum())


def weighted_low_rank(w: torch.Tensor, r: int, metric: Metric | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with U V the best rank-r fit of w under `metric` and sqrt(S) on each side.

    Plain metric: the truncated SVD of w in float32 (the classic init, bit for bit). Otherwise
    SVD of D W L = P S Q^T (float32), U = D^-1 P_r S^1/2, V = S^1/2 Q_r^T L^-1 (float64): each
    dropped singular value is exactly the error it adds (SVD-LLM)."""
    metric = metric or Metric()
    if metric.plain:
        u, s, vh = thin_svd(w)
        root = s[:r].sqrt()
        return u[:, :r] * root, root[:, None] * vh[:r]
    u, s, vh = thin_svd(metric.whiten(w).float())  # float32: half the time of float64, same fit
    root = s[:r].double().sqrt()
    left = metric.unwhiten_rows(u[:, :r].double() * root)
    right = metric.unwhiten_cols(root[:, None] * vh[:r].double())
    return balance(left.float(), right.float())


def balance(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale each rank-1 term u_k v_k^T so that |u_k| and |v_k| have the same largest entry:
    U V is unchanged and both factors keep similar ranges for quantisation (pitfall 11)."""
    a = u.abs().amax(0).clamp_min(1e-30)
    b = v.abs().amax(1).clamp_min(1e-30)
    c = (b / a).sqrt()
    return u * c, v / c[:, None]


# --- Kronecker products (Van Loan–Pitsianis), shared by kronecker and the factored weights of tt ---
FULL_SVD_MAX = 256  # rearranged matrices with a larger side use a randomised truncated SVD


def nearest_kronecker(w: torch.Tensor, m1: int, n1: int, terms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Van Loan–Pitsianis: A (terms, m1, n1), B (terms, m2, n2) minimising ||W - sum A_r (x) B_r||_F."""
    m, n = w.shape
    m2, n2 = m // m1, n // n1
    # R(W)[(i1, j1), (i2, j2)] = W[i1 m2 + i2, j1 n2 + j2]
    r = w.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    if min(r.shape) <= FULL_SVD_MAX:
        u, s, vh = torch.linalg.svd(r.double(), full_matrices=False)
    else:  # randomised: ~40x faster at 2500 x 2600, same top singular triplets to 1e-6 relative
        with torch.random.fork_rng(devices=[]):  # deterministic, and the global RNG is left alone
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(r.float(), q=min(terms + 10, min(r.shape)), niter=4)
        vh = v.T
    root = s[:terms].sqrt()
    a = (u[:, :terms] * root).T.reshape(terms, m1, n1)
    b = (vh[:terms] * root[:, None]).reshape(terms, m2, n2)
    return a.float(), b.float()


def kronecker_psd(h: torch.Tensor, modes: tuple[int, ...]) -> list[torch.Tensor]:
    """PSD factors H_1 .. H_d (modes[k] x modes[k]) with H_1 (x) ... (x) H_d near the PSD matrix h
    (one nearest Kronecker product per split, Van Loan–Pitsianis: its top term can be taken PSD)."""
    factors, rest = [], h.double()
    for size in modes[:-1]:
        a, b = nearest_kronecker(rest, size, size, 1)
        a, b = a[0].double(), b[0].double()
        if a.trace() < 0:  # the pair is defined up to a common sign
            a, b = -a, -b
        factors.append(_psd_part(a))
        rest = b
    return factors + [_psd_part(rest)]


def _psd_part(x: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((x + x.T) / 2)
    return (vecs * vals.clamp_min(1e-6 * float(vals.abs().max()))) @ vecs.T


def kronecker_rows(row: torch.Tensor, modes: tuple[int, ...]) -> list[torch.Tensor]:
    """Positive d_1 .. d_d with d_1 (x) ... (x) d_d a rank-1 fit of row weights (one split at a time)."""
    factors, rest = [], row.double()
    for size in modes[:-1]:
        u, s, vh = torch.linalg.svd(rest.reshape(size, -1), full_matrices=False)
        factors.append((u[:, 0].abs() * s[0].sqrt()).clamp_min(1e-12))
        rest = (vh[0].abs() * s[0].sqrt()).clamp_min(1e-12)
    return factors + [rest]
