"""Replay: the loss of a model with some sites compressed, on a fixed token slice, recomputing only
what the compressed sites change.

The dense model runs over the slice once and keeps the activations that enter each stage; a
stage is the embedding, one LSTM layer, or the softmax of the reference LSTM. A model with some
sites compressed then restarts from the first stage that holds one of them: a softmax option
costs the logits only, an LSTM layer's option that layer and those above. Any other model is one
stage (a full pass, in windows that carry the state, as `evaluate_perplexity` runs).

The model with compressed sites is a shallow copy: the modules on the way to each site are copied
and the compressed module put in the copy, so the caller's model and its parameters are never
touched and no dense weight is copied.
"""

from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from autoshrink.data import batchify, bptt_windows
from autoshrink.methods import CompressedWeight, MethodConfig, weight_class
from autoshrink.models.lstm_lm import LSTMLM
from autoshrink.plan import dense_weight, place_compressed
from autoshrink.sites import Site, SiteStats

LOGIT_ROWS = 4096  # positions per softmax chunk: a 10k-word vocabulary costs 160 MB per chunk


def build_site(
    model: nn.Module,
    site: Site,
    config: MethodConfig,
    freqs: torch.Tensor | None = None,
    stats: Mapping[str, SiteStats] | None = None,
) -> CompressedWeight:
    """The compressed weight of one site, initialised from the model's dense weight and, where
    `stats` has them, the site's calibration statistics (data-aware builds)."""
    weight = dense_weight(model.get_submodule(site.name))[0].float().cpu().contiguous()
    site_stats = (stats or {}).get(site.name) or SiteStats(freqs=freqs if site.is_vocab else None)
    return weight_class(config).build(weight, site, config, site_stats).eval()


def _shallow(module: nn.Module) -> nn.Module:
    clone = copy.copy(module)
    clone._modules = dict(module._modules)  # a child set on the clone must not reach the original
    return clone


def with_compressed(model: nn.Module, sites: Mapping[str, Site], built: Mapping[str, CompressedWeight]) -> nn.Module:
    """A shallow copy of `model` whose sites in `built` (and their tie partners) are compressed."""
    names = [s.name for s in sites.values() if (s.tied_with or s.name) in built]
    root = _shallow(model)
    copied: dict[str, nn.Module] = {"": root}
    for name in names:
        parent, prefix = root, ""
        for part in name.split(".")[:-1]:
            prefix = f"{prefix}.{part}" if prefix else part
            if prefix not in copied:
                copied[prefix] = _shallow(parent._modules[part])
                parent._modules[part] = copied[prefix]
            parent = copied[prefix]
    place_compressed(root, dict(sites), dict(built))  # sets children on the copied parents only
    return root


def _token_nll(
    logits_of: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """NLL of each target (time-major) given the top hidden states, the softmax in chunks of positions."""
    flat_h, flat_y = hidden.reshape(-1, hidden.size(-1)), targets.reshape(-1)
    return torch.cat(
        [
            F.cross_entropy(
                logits_of(flat_h[start : start + LOGIT_ROWS]).float(),
                flat_y[start : start + LOGIT_ROWS],
                reduction="none",
            )
            for start in range(0, flat_y.numel(), LOGIT_ROWS)
        ]
    )


class Replay:
    """NLL per token of the model, and of shallow copies with sites compressed, on `ids` (cut into
    `batch_size` streams; tokens in time-major order, the same order in every call, so two plans'
    losses can be compared token by token)."""

    def __init__(self, model: nn.Module, ids: torch.Tensor, batch_size: int = 10, bptt: int = 35):
        self.model = model.eval()
        self.columns = batchify(ids.reshape(-1), batch_size)
        self.bptt = bptt
        self.staged = isinstance(model, LSTMLM)
        self.inputs: list[torch.Tensor] = []  # what enters each LSTM layer, then the top hidden states
        with torch.no_grad():
            if self.staged:
                x = model.encoder(self.columns[:-1])
                for layer in model.rnn:
                    self.inputs.append(x)
                    x = self._run_layer(layer, x)
                self.inputs.append(x)
            self.dense_tokens = self._token_losses(model, start=0)
            self.dense_loss = float(self.dense_tokens.double().mean())

    def stage(self, name: str) -> int:
        """0 for the embedding (and any site of an unstaged model), k + 1 for LSTM layer k, the
        number of layers + 1 for the softmax."""
        if not self.staged or name == "encoder":
            return 0
        if name.startswith("rnn."):
            return int(name.split(".")[1]) + 1
        return len(self.model.rnn) + 1

    def _run_layer(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        z = x.new_zeros(x.size(1), layer.hidden)
        return layer(x, (z, z))[0]

    def _token_losses(self, model: nn.Module, start: int) -> torch.Tensor:
        if not self.staged:
            losses, state = [], None
            for x, y in bptt_windows(self.columns, self.bptt):
                logits, state = model(x, state)
                losses.append(
                    F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
                )
            return torch.cat(losses)
        layers = len(model.rnn)
        x = model.encoder(self.columns[:-1]) if start == 0 else self.inputs[start - 1]
        for k in range(max(0, start - 1), layers):
            x = self._run_layer(model.rnn[k], x)
        return _token_nll(model.decoder, x, self.columns[1:])

    @torch.no_grad()
    def token_losses(self, sites: Mapping[str, Site], built: Mapping[str, CompressedWeight]) -> torch.Tensor:
        """NLL of each token with the sites in `built` compressed (the rest dense)."""
        if not built:
            return self.dense_tokens
        model = with_compressed(self.model, sites, built)
        names = [s.name for s in sites.values() if (s.tied_with or s.name) in built]
        return self._token_losses(model, start=min(self.stage(n) for n in names))

    def loss(self, sites: Mapping[str, Site], built: Mapping[str, CompressedWeight]) -> float:
        """Mean NLL per token with the sites in `built` compressed (the rest dense)."""
        return float(self.token_losses(sites, built).double().mean())
