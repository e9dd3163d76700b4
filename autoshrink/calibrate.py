"""Calibration: one pass of the dense model over training tokens, the statistics data-aware
initialisation needs (docs/methods.md, data-aware initialisation), per site.

Every site module is wrapped, for the pass, in a probe that records what enters it and the
gradient of the language-model loss (next-token cross-entropy) at what leaves it:
  - `moment`: the second moment that weighs the matrix's columns. For a matrix that multiplies
    inputs (Linear, Hugging Face Conv1D, an LSTM's `ih` and `hh`, the softmax) it is the input
    moment H = X^T X / count; for an embedding, whose input is a one-hot word, it is the moment of
    the loss gradient at its output vectors, E[g g^T] (the error of a row e_i costs about
    delta G delta^T each time word i occurs).
  - `mean`: the mean input (None for an embedding).
  - `grad_sq`: E[g_i^2] per output row of a matrix (the diagonal Fisher of its outputs): how much
    an error in that output costs (a saturated LSTM gate little, an open one much); and
    `grad_moment`, the full E[g g^T], for matrices with at most FULL_GRAD_MAX outputs.
  - `freqs`: the training split's word counts on vocabulary sites (`model.vocab.freqs`).
The probe replaces the module, so a reference LSTM layer leaves its fused kernel for the pass and
calls `ih` on the layer input and `hh` on each previous hidden state h_{t-1}: what the fused
kernel multiplies. Tied sites share one weight: the owner gets its partner's statistics when it
has none of its own.

The tokens are `tokens` training tokens taken as STREAMS evenly spaced contiguous pieces (more
varied text than one prefix; pieces of 32 steps keep the probed step loop short), each after 32
unrecorded tokens that warm up the recurrent state (run through the model's own fused path), in
eval mode (no dropout), at most PASS_TOKENS per forward and backward pass. The result is cached under the
autoshrink cache, keyed by a fingerprint of the model's weights, of the token ids used and the
token count, as safetensors (nothing is unpickled), so a search computes it once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from autoshrink.data.cache import cache_root
from autoshrink.models.discover import discover_sites, in_place_target
from autoshrink.sites import Site, SiteStats

DEFAULT_TOKENS = 4096
STREAMS = 128  # contiguous pieces of the train split, run as one batch
STEPS = 32  # tokens per piece when more are asked for: the probed step loop stays short
BURN_IN = 32  # unrecorded tokens before each piece: its recurrent state is warm, not zero
PASS_TOKENS = 4096  # tokens per forward/backward pass (logits of V words each)
FORMAT = "autoshrink-calibration/3"
FIELDS = ("moment", "mean", "grad_sq", "grad_moment", "freqs")
FULL_GRAD_MAX = 2048  # matrices with at most this many outputs keep the full E[g g^T]


class _Sums:
    """Running float64 sums over rows: x x^T and x (inputs), g g^T or g^2 (output gradients)."""

    def __init__(self):
        self.xx = self.x = self.gg = None
        self.count = 0
        self.grad_count = 0

    def add_input(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        self.xx = x.T @ x if self.xx is None else self.xx + x.T @ x
        self.x = x.sum(0) if self.x is None else self.x + x.sum(0)
        self.count += x.shape[0]

    def add_grad(self, g: torch.Tensor, full: bool) -> None:
        g = g.detach().reshape(-1, g.shape[-1]).double()
        part = g.T @ g if full else (g * g).sum(0)
        self.gg = part if self.gg is None else self.gg + part
        self.grad_count += g.shape[0]


class _Probe(nn.Module):
    """Stands in a site's module during the pass: calls it, records input and output gradient.
    Not an nn.Linear, so a layer that special-cases Linear (the LSTM's fused path) calls it."""

    def __init__(self, inner: nn.Module, sums: _Sums, lookup: bool, outputs: int):
        super().__init__()
        self.inner, self.sums, self.lookup = inner, sums, lookup
        self.full = lookup or outputs <= FULL_GRAD_MAX  # keep E[g g^T], not only its diagonal

    def __getattr__(self, name: str):
        """What the model reads of its module (`decoder.out_features`, `encoder.weight`) comes from it."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["inner"], name)

    def forward(self, x, *args, **kwargs):
        if not self.lookup:
            self.sums.add_input(x)
        y = self.inner(x, *args, **kwargs)
        if y.requires_grad:  # an embedding's output gradient weighs its columns (full moment)
            y.register_hook(lambda g: self.sums.add_grad(g, full=self.full))
        return y


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def calibration_ids(train_ids: torch.Tensor, tokens: int, streams: int, burn_in: int = 0) -> torch.Tensor:
    """(burn_in + T + 1, B) ids: `streams` contiguous pieces of the split, evenly spaced, `tokens`
    recorded inputs in all, each after `burn_in` unrecorded ones and with its next word as the
    last target."""
    ids = train_ids.reshape(-1)
    streams = max(streams, tokens // STEPS)  # more tokens: more streams of the same length
    streams = max(1, min(streams, tokens, len(ids) - 1))
    length = max(1, min(tokens, len(ids) - 1) // streams)
    burn_in = max(0, min(burn_in, len(ids) - length - 1))
    starts = torch.linspace(0, len(ids) - length - burn_in - 1, streams).long()
    return torch.stack([ids[s : s + burn_in + length + 1] for s in starts.tolist()], dim=1)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def collect(
    model: nn.Module,
    train_ids: torch.Tensor,
    tokens: int = DEFAULT_TOKENS,
    sites: list[Site] | None = None,
    freqs: torch.Tensor | None = None,
    streams: int = STREAMS,
) -> dict[str, SiteStats]:
    """The statistics of one forward and backward pass (no cache): {site name: SiteStats}."""
    sites = sites if sites is not None else discover_sites(model)
    # Sites a standard torch module multiplies in place inside its own kernel (nn.LSTM's
    # weight_ih_l0, attention's in_proj_weight) have no module to probe: they build plain.
    sites = [s for s in sites if _submodule(model, s.name) is not None and in_place_target(model, s.name) is None]
    if freqs is None and getattr(model, "vocab", None) is not None:
        freqs = getattr(model.vocab, "freqs", None)
    sums = {s.name: _Sums() for s in sites}
    originals = {s.name: model.get_submodule(s.name) for s in sites}
    probes = {
        s.name: _Probe(originals[s.name], sums[s.name], isinstance(originals[s.name], nn.Embedding), s.shape[0])
        for s in sites
    }
    was_training = model.training
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval()
    device = next(iter(originals.values())).weight.device
    ids = calibration_ids(train_ids, tokens, streams, BURN_IN).to(device)
    burn_in = ids.shape[0] - min(tokens, len(train_ids) - 1) // ids.shape[1] - 1
    per_pass = max(1, PASS_TOKENS // (ids.shape[0] - burn_in - 1))  # streams per pass: the logits stay small
    try:
        for p in model.parameters():
            p.requires_grad_(False)  # gradients of activations only
        for first in range(0, ids.shape[1], per_pass):
            part = ids[:, first : first + per_pass]
            state = None
            if burn_in:  # a warm recurrent state, from the model's own (fused) path, unrecorded
                with torch.no_grad():
                    out = model(part[:burn_in])
                state = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
            for name, probe in probes.items():
                _swap(model, name, probe)
            try:
                with torch.enable_grad():
                    logits = _forward_with_grad(model, part[burn_in:-1], state)
                    F.cross_entropy(
                        logits.float().reshape(-1, logits.shape[-1]), part[burn_in + 1 :].reshape(-1), reduction="sum"
                    ).backward()
            finally:
                for name, module in originals.items():
                    _swap(model, name, module)
    finally:
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])
        model.train(was_training)
    return _stats(sites, sums, freqs)


def _forward_with_grad(model: nn.Module, ids: torch.Tensor, state=None) -> torch.Tensor:
    """Logits whose graph reaches every probe: the embedding's output is made to need a gradient."""
    hooks = [
        m.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True))
        for m in model.modules()
        if isinstance(m, nn.Embedding)
    ]
    try:
        out = model(ids) if state is None else model(ids, state)
    finally:
        for h in hooks:
            h.remove()
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)


def _stats(sites: list[Site], sums: dict[str, _Sums], freqs: torch.Tensor | None) -> dict[str, SiteStats]:
    out: dict[str, SiteStats] = {}
    for site in sites:
        acc = sums[site.name]
        grad = None if acc.gg is None else (acc.gg / max(1, acc.grad_count)).cpu()
        grad_moment = grad if grad is not None and grad.dim() == 2 and acc.count else None
        grad_sq = grad.diagonal().clone() if grad_moment is not None else grad
        site_freqs = (
            freqs.detach().double().cpu()
            if site.is_vocab and freqs is not None and len(freqs) == site.shape[0]
            else None
        )
        if acc.count:  # a matrix that multiplies inputs
            out[site.name] = SiteStats(
                moment=(acc.xx / acc.count).cpu(),
                tokens=acc.count,
                freqs=site_freqs,
                mean=(acc.x / acc.count).cpu(),
                grad_sq=grad_sq,
                grad_moment=grad_moment,
            )
        else:  # an embedding: its output gradient's moment weighs its columns
            out[site.name] = SiteStats(moment=grad, tokens=acc.grad_count, freqs=site_freqs)
    for site in sites:  # a tied owner without inputs takes its partner's
        partner = out[site.name]
        owner = out.get(site.tied_with) if site.tied_with else None
        if owner is not None and owner.mean is None and partner.mean is not None:
            out[site.tied_with] = SiteStats(
                partner.moment,
                partner.tokens,
                owner.freqs if owner.freqs is not None else partner.freqs,
                partner.mean,
                partner.grad_sq,
                partner.grad_moment,
            )
    return out


def fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameters and buffers (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, t in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def cache_path(model: nn.Module, train_ids: torch.Tensor, tokens: int, streams: int = STREAMS) -> Path:
    ids = calibration_ids(train_ids, tokens, streams, BURN_IN)
    data_key = hashlib.sha256(ids.numpy().astype("int64").tobytes()).hexdigest()[:16]
    return cache_root() / "calibration" / f"{fingerprint(model)}-{data_key}-{tokens}.safetensors"


def calibrate(
    model: nn.Module,
    train_ids: torch.Tensor,
    tokens: int = DEFAULT_TOKENS,
    sites: list[Site] | None = None,
    freqs: torch.Tensor | None = None,
    cache: bool = True,
) -> dict[str, SiteStats]:
    """Per-site statistics of `model` on `tokens` training tokens, computed once per (model
    weights, tokens used) and then read from the cache."""
    path = cache_path(model, train_ids, tokens) if cache else None
    if path is not None and path.is_file():
        try:
            return _read(path)
        except (OSError, ValueError, KeyError):  # a torn or foreign file: compute again
            pass
    stats = collect(model, train_ids, tokens, sites, freqs)
    if path is not None:
        _write(path, stats)
    return stats


def _write(path: Path, stats: dict[str, SiteStats]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # clone: tied sites share one statistics object, and safetensors refuses shared storage
    tensors = {
        f"{name}/{key}": getattr(s, key).contiguous().clone()
        for name, s in stats.items()
        for key in FIELDS
        if getattr(s, key) is not None
    }
    tmp = path.with_suffix(".tmp")
    save_file(
        tensors, str(tmp), metadata={"format": FORMAT, "tokens": json.dumps({n: s.tokens for n, s in stats.items()})}
    )
    tmp.replace(path)


def _read(path: Path) -> dict[str, SiteStats]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a calibration file of format {FORMAT}")
    tensors = load_file(str(path))
    return {
        name: SiteStats(tokens=int(count), **{key: tensors.get(f"{name}/{key}") for key in FIELDS})
        for name, count in json.loads(meta["tokens"]).items()
    }
