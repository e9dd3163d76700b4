"""Latency of a model and of plans: the `4ms` budget of docs/design.md (Budgets and bytes).

`measure_latency_ms` is the ground truth: the median wall time of one forward pass of the
reference input (35 tokens, batch 1). A search cannot afford to compress and time the whole model
for every trial, so `LatencyTable` estimates a plan from per-site measurements:

    latency(model under plan) ~= latency(dense model)
                                 + sum over sites of [t(site, cfg) - t(site, dense)]

t(site, .) is the median time of the site's module alone on the input it sees in the reference
forward: an embedding looks up the (T, B) ids; softmax and other linear sites multiply (T, B, n),
timed as modules (nn.Linear / nn.Embedding against CompressedLinear / CompressedEmbedding). A
recurrent matrix is multiplied inside the fused recurrent kernel whether it is dense or not; a
compressed one adds the time to build it once per forward, which the method contract's
`timed_call` says, and nothing else. Timings are cached per (device context, site name, shape, config JSON)
and, given a path, persisted as JSON after every new measurement, so a resumed search reuses them.
The device context names the device, CPU threads and input shape: timings taken under another
context are not reused.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from autoshrink.data import batchify
from autoshrink.errors import UserError
from autoshrink.measure.timing import Spread, timings
from autoshrink.methods import CompressedEmbedding, CompressedLinear, MethodConfig, weight_class
from autoshrink.models.discover import discover_sites
from autoshrink.sites import Site, SiteStats
from autoshrink.plan import compress, dense_weight, parse_plan, resolve
from autoshrink.plan.parametrize import CompressedParameter, in_place_weight


@torch.no_grad()
def spread_seconds(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> Spread:
    return Spread.of(timings(fn, repeats=repeats, warmup=warmup))


def median_seconds(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> float:
    return spread_seconds(fn, repeats=repeats, warmup=warmup).median


Key = tuple[str, str, tuple[int, int], str]
_FORMAT = "autoshrink-latency-table"


def reference_input(vocab_size: int, tokens: int = 35, batch: int = 1) -> torch.Tensor:
    """Deterministic word ids (tokens, batch), the same on every call."""
    if vocab_size < 1 or tokens < 1 or batch < 1:
        raise UserError(f"reference input needs vocab_size, tokens and batch >= 1, got {vocab_size}, {tokens}, {batch}")
    g = torch.Generator().manual_seed(35)
    return torch.randint(vocab_size, (tokens, batch), generator=g)


def _device_of(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _spread(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> Spread:
    """spread_seconds, synchronising an accelerator after each call."""
    if device.type == "cuda":

        def run():
            fn()
            torch.cuda.synchronize(device)

        return spread_seconds(run, repeats=repeats, warmup=warmup)
    return spread_seconds(fn, repeats=repeats, warmup=warmup)


def _seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    return _spread(fn, device, repeats, warmup).median


def measure_latency(model: nn.Module, ids: torch.Tensor, repeats: int = 20, warmup: int = 3) -> Spread:
    """Wall time in ms of one forward pass (eval mode, no grad) on the model's device: median and
    IQR of `repeats` passes."""
    model.eval()
    device = _device_of(model)
    ids = ids.to(device)
    return _spread(lambda: model(ids), device, repeats, warmup).scaled(1e3)


def measure_latency_ms(model: nn.Module, ids: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in ms of one forward pass (measure_latency's median)."""
    return measure_latency(model, ids, repeats=repeats, warmup=warmup).median


def measure_throughput(
    model: nn.Module, ids: torch.Tensor, batch_size: int = 10, bptt: int = 35, repeats: int = 20, warmup: int = 3
) -> Spread:
    """Tokens per second of evaluation forwards (batch_size x bptt windows of `ids`, as the
    perplexity pass runs them) on the model's device: median and IQR over `repeats` windows."""
    model.eval()
    device = _device_of(model)
    columns = batchify(ids, batch_size).to(device)
    window = columns[:bptt] if len(columns) > bptt else columns
    seconds = _spread(lambda: model(window), device, repeats, warmup)
    return seconds.inverted(window.numel())


def _vocab_size(model: nn.Module, sites: list[Site]) -> int:
    config = getattr(model, "config", None)
    if isinstance(getattr(config, "vocab_size", None), int):
        return config.vocab_size
    vocab = [s.shape[0] for s in sites if s.is_vocab]
    if not vocab:
        raise UserError("cannot tell the model's vocabulary size: it has no embedding or softmax site")
    return max(vocab)


def _model_freqs(model: nn.Module, freqs: torch.Tensor | None) -> torch.Tensor | None:
    vocab = getattr(model, "vocab", None)
    return freqs if freqs is not None else getattr(vocab, "freqs", None)


def measure_plan_ms(
    model: nn.Module,
    plan: Mapping[str, Any] | str | Path,
    freqs: torch.Tensor | None = None,
    tokens: int = 35,
    batch: int = 1,
    repeats: int = 20,
    warmup: int = 3,
) -> float:
    """Ground truth for LatencyTable: compress the model under `plan` and time the reference forward."""
    small = compress(model, plan, freqs=_model_freqs(model, freqs)).to(_device_of(model))
    ids = reference_input(_vocab_size(model, discover_sites(model)), tokens, batch)
    return measure_latency_ms(small, ids, repeats=repeats, warmup=warmup)


class LatencyTable:
    """Whole-model latency of plans estimated from cached per-site timings (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        path: str | Path | None = None,
        freqs: torch.Tensor | None = None,
        tokens: int = 35,
        batch: int = 1,
        repeats: int = 20,
        warmup: int = 3,
    ):
        self.device = torch.device(device)
        self.model = model if _device_of(model) == self.device else copy.deepcopy(model).to(self.device)
        self.model.eval()
        self.sites = discover_sites(self.model)
        self.freqs = _model_freqs(model, freqs)
        self.tokens, self.batch, self.repeats, self.warmup = tokens, batch, repeats, warmup
        self.ids = reference_input(_vocab_size(self.model, self.sites), tokens, batch).to(self.device)
        threads = f",threads={torch.get_num_threads()}" if self.device.type == "cpu" else ""
        self.context = f"{self.device}[input={tokens}x{batch}{threads}]"
        self.path = Path(path).expanduser() if path is not None else None
        self.cache: dict[Key, float] = self._load() if self.path is not None and self.path.exists() else {}
        self.measurements = 0  # timings this table took (cache misses)

    # --- persistence ---------------------------------------------------------------------
    def _load(self) -> dict[Key, float]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("format") != _FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {_FORMAT!r}")
            return {
                (e["device"], e["site"], tuple(e["shape"]), e["config"]): float(e["seconds"]) for e in data["entries"]
            }
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"latency table {self.path} cannot be read: {e}") from None

    def save(self) -> None:
        if self.path is None:
            return
        entries = [
            {"device": d, "site": s, "shape": list(shape), "config": c, "seconds": v}
            for (d, s, shape, c), v in sorted(self.cache.items())
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"format": _FORMAT, "version": 1, "entries": entries}, indent=1) + "\n")
        tmp.replace(self.path)

    def _cached(self, name: str, shape: tuple[int, int], config: str, measure: Callable[[], float]) -> float:
        key = (self.context, name, (int(shape[0]), int(shape[1])), config)
        if key not in self.cache:
            self.cache[key] = float(measure())
            self.measurements += 1
            self.save()
        return self.cache[key]

    def _time(self, fn: Callable[[], object]) -> float:
        return _seconds(fn, self.device, self.repeats, self.warmup)

    # --- measurements --------------------------------------------------------------------
    @property
    def dense_ms(self) -> float:
        """Measured latency of the dense model."""
        arch = json.dumps([type(self.model).__name__] + [[s.name, list(s.shape), s.bias] for s in self.sites])
        return 1e3 * self._cached(
            "<model>", (self.tokens, self.batch), arch, lambda: self._time(lambda: self.model(self.ids))
        )

    def _site_input(self, site: Site) -> torch.Tensor:
        """The input a site sees in the reference forward."""
        if site.role == "embedding":
            return self.ids
        g = torch.Generator().manual_seed(0)
        return torch.randn(self.tokens, self.batch, site.shape[1], generator=g).to(self.device)

    def site_seconds(self, site: Site, cfg: MethodConfig | None) -> float:
        """Time of the site's module over one reference forward; cfg None: the dense module."""
        in_place = in_place_weight(self.model, site.name)  # a standard module's own matrix (nn.LSTM, attention)
        if cfg is None and (site.role == "recurrent" or in_place is not None):
            return 0.0  # multiplied inside the fused kernel: no time of its own to remove

        def measure() -> float:
            if in_place is not None:  # the module's kernel stays; building W is what the compressed form adds
                built = weight_class(cfg).build(in_place.float().cpu(), site, cfg)
                module = CompressedParameter(built).to(self.device).eval()
                return self._time(module.timed_call(None))
            weight, bias = dense_weight(self.model.get_submodule(site.name))
            x = self._site_input(site)
            embedding = site.role == "embedding" and isinstance(self.model.get_submodule(site.name), nn.Embedding)
            if cfg is None:
                w = weight.float()
                module = (
                    nn.Embedding.from_pretrained(w)
                    if embedding
                    else nn.Linear(site.shape[1], site.shape[0], bias=bias is not None)
                )
                if not embedding:
                    with torch.no_grad():
                        module.weight.copy_(w)
                        if bias is not None:
                            module.bias.copy_(bias)
            else:
                built = weight_class(cfg).build(
                    weight.float().cpu(), site, cfg, SiteStats(freqs=self.freqs if site.is_vocab else None)
                )
                module = CompressedEmbedding(built) if embedding else CompressedLinear(built, bias)
                module = module.to(self.device).eval()
                return self._time(module.timed_call(x.to(self.device)) if not embedding else lambda: module(x))
            module = module.to(self.device).eval()
            return self._time(lambda: module(x))

        config = "dense" if cfg is None else json.dumps(cfg.to_dict(), sort_keys=True)
        return self._cached(site.name, site.shape, config, measure)

    # --- estimates -----------------------------------------------------------------------
    def _resolved(self, plan: Mapping[str, Any] | str | Path) -> tuple[dict[str, Site], dict[str, MethodConfig]]:
        by_name, resolved = resolve(self.model, parse_plan(plan), self.sites)
        per_site = {}
        for site in self.sites:
            owner = site.tied_with or site.name
            if owner in resolved:
                per_site[site.name] = resolved[owner]
        return by_name, per_site

    def estimate_ms(self, plan: Mapping[str, Any]) -> float:
        """Estimated latency (ms) of the model compressed under `plan`; measures only what is not cached."""
        by_name, per_site = self._resolved(plan)
        seconds = self.dense_ms / 1e3
        for name, cfg in per_site.items():
            seconds += self.site_seconds(by_name[name], cfg) - self.site_seconds(by_name[name], None)
        return 1e3 * seconds
