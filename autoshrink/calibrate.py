"""Calibration: one pass of the dense model over training tokens, the statistics data-aware
initialisation needs (METHODS.md section 8), per site.

For every site: the input second moment H = X^T X / count (accumulated in float64) and the mean
input, where X are the rows that enter the matrix:
  - a Linear (or Hugging Face Conv1D) site: its input, recorded by a forward pre-hook (the
    softmax: the top hidden state);
  - an LSTM layer's `ih` and `hh` (the reference LSTMLayer runs torch's fused kernel, so neither
    module is called): `ih` sees the layer input, `hh` the previous hidden state h_{t-1}, i.e.
    the layer's output shifted by one step with the initial state in front; recorded by a
    forward hook on the layer;
  - an embedding: no dense input (a one-hot word), only the word counts.
Vocabulary sites (embedding, softmax) carry the word counts of the training split
(`model.vocab.freqs`). Tied sites share one weight: the owner gets its partner's moment when it
has none (a tied embedding/softmax is fitted for the softmax's inputs and the word counts).

The tokens are `tokens` training tokens taken as STREAMS evenly spaced contiguous pieces (more
varied text than one prefix), run with the model in eval mode (no dropout). The result is cached
under the autoshrink cache, keyed by a fingerprint of the model's weights, of the token ids used
and the token count, as safetensors (nothing is unpickled), so a search computes it once.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from autoshrink.data.cache import cache_root
from autoshrink.models.discover import discover_sites
from autoshrink.sites import Site, SiteStats

DEFAULT_TOKENS = 4096
STREAMS = 16  # contiguous pieces of the train split, run as one batch
FORMAT = "autoshrink-calibration/1"


class _Moment:
    """Running sums of x x^T and x over input rows (float64)."""

    def __init__(self):
        self.sum_xx: torch.Tensor | None = None
        self.sum_x: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        if self.sum_xx is None:
            self.sum_xx = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self.sum_x = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
        self.sum_xx += x.T @ x
        self.sum_x += x.sum(0)
        self.count += x.shape[0]


def _recurrent_layer(model: nn.Module, site: Site) -> tuple[str, nn.Module] | None:
    """(`ih` | `hh`, the layer) when the site is one matrix of a layer holding both (an LSTM layer
    whose forward is (x, (h0, c0)) -> (out, (h, c)))."""
    parent_name, _, child = site.name.rpartition(".")
    if child not in ("ih", "hh") or not parent_name:
        return None
    parent = model.get_submodule(parent_name)
    return (child, parent) if hasattr(parent, "ih") and hasattr(parent, "hh") else None


class _Done(Exception):
    """Raised once the softmax's input is recorded: its logits are not needed."""


def _hooks(model: nn.Module, sites: list[Site], moments: dict[str, _Moment]) -> list:
    handles = []
    hooked = {s.name for s in sites if s.role != "embedding"}
    layers: dict[int, tuple[nn.Module, dict[str, str]]] = {}
    for site in sites:
        if site.role == "embedding":
            continue
        recurrent = _recurrent_layer(model, site)
        if recurrent is not None:
            child, layer = recurrent
            layers.setdefault(id(layer), (layer, {}))[1][child] = site.name
            continue
        module = model.get_submodule(site.name)

        def record(_module, args, name=site.name, last=site.role == "softmax"):
            moments[name].add(args[0])
            if last and all(moments[n].count for n in hooked):
                raise _Done  # the output layer's product (V x n per token) would be wasted

        handles.append(module.register_forward_pre_hook(record))
    for layer, names in layers.values():

        def record_layer(_module, args, output, names=names):
            x, (h0, _c0) = args[0], args[1]
            out = output[0]  # (T, B, H)
            if "ih" in names:
                moments[names["ih"]].add(x)
            if "hh" in names:  # h_{t-1}: the initial state, then the outputs but the last
                moments[names["hh"]].add(torch.cat([h0.unsqueeze(0), out[:-1]]))

        handles.append(layer.register_forward_hook(record_layer))
    return handles


def _streams(train_ids: torch.Tensor, tokens: int, streams: int) -> torch.Tensor:
    """(T, B) ids: `streams` contiguous pieces of the split, evenly spaced, tokens in all."""
    ids = train_ids.reshape(-1)
    streams = max(1, min(streams, tokens, len(ids)))
    length = max(1, min(tokens, len(ids)) // streams)
    starts = torch.linspace(0, len(ids) - length, streams).long()
    return torch.stack([ids[s:s + length] for s in starts.tolist()], dim=1)


@torch.no_grad()
def collect(model: nn.Module, train_ids: torch.Tensor, tokens: int = DEFAULT_TOKENS, sites: list[Site] | None = None,
            freqs: torch.Tensor | None = None, streams: int = STREAMS) -> dict[str, SiteStats]:
    """The statistics of one pass (no cache): {site name: SiteStats}."""
    sites = sites if sites is not None else discover_sites(model)
    if freqs is None and getattr(model, "vocab", None) is not None:
        freqs = getattr(model.vocab, "freqs", None)
    moments = {s.name: _Moment() for s in sites}
    handles = _hooks(model, sites, moments)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(_streams(train_ids, tokens, streams).to(device))
    except _Done:
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out: dict[str, SiteStats] = {}
    for site in sites:
        acc = moments[site.name]
        moment = mean = None
        if acc.count:
            moment, mean = (acc.sum_xx / acc.count).cpu(), (acc.sum_x / acc.count).cpu()
        site_freqs = freqs.detach().double().cpu() if site.is_vocab and freqs is not None and len(freqs) == site.shape[0] else None
        out[site.name] = SiteStats(moment=moment, tokens=acc.count, freqs=site_freqs, mean=mean)
    for site in sites:  # a tied owner without inputs takes its partner's
        partner = out[site.name]
        if site.tied_with in out and out[site.tied_with].moment is None and partner.moment is not None:
            owner = out[site.tied_with]
            out[site.tied_with] = SiteStats(partner.moment, partner.tokens, owner.freqs if owner.freqs is not None else partner.freqs,
                                            partner.mean)
    return out


def fingerprint(model: nn.Module) -> str:
    """A short hash of the model's parameters and buffers (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, t in list(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_path(model: nn.Module, train_ids: torch.Tensor, tokens: int, streams: int = STREAMS) -> Path:
    ids = _streams(train_ids, tokens, streams)
    data_key = hashlib.sha256(ids.numpy().astype("int64").tobytes()).hexdigest()[:16]
    return cache_root() / "calibration" / f"{fingerprint(model)}-{data_key}-{tokens}.safetensors"


def calibrate(model: nn.Module, train_ids: torch.Tensor, tokens: int = DEFAULT_TOKENS, sites: list[Site] | None = None,
              freqs: torch.Tensor | None = None, cache: bool = True) -> dict[str, SiteStats]:
    """Per-site statistics of `model` on `tokens` training tokens, computed once per (model
    weights, tokens used) and then read from the cache."""
    path = cache_path(model, train_ids, tokens) if cache else None
    if path is not None and path.is_file():
        try:
            return _read(path)
        except Exception:  # a torn or foreign file: compute again
            pass
    stats = collect(model, train_ids, tokens, sites, freqs)
    if path is not None:
        _write(path, stats)
    return stats


def _write(path: Path, stats: dict[str, SiteStats]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, tokens = {}, {}
    for name, s in stats.items():
        tokens[name] = s.tokens
        for key in ("moment", "mean", "freqs"):
            value = getattr(s, key)
            if value is not None:
                tensors[f"{name}/{key}"] = value.contiguous()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "tokens": json.dumps(tokens)})
    tmp.replace(path)


def _read(path: Path) -> dict[str, SiteStats]:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a calibration file")
    tensors = load_file(str(path))
    return {name: SiteStats(moment=tensors.get(f"{name}/moment"), tokens=int(count), freqs=tensors.get(f"{name}/freqs"),
                            mean=tensors.get(f"{name}/mean"))
            for name, count in json.loads(meta["tokens"]).items()}
