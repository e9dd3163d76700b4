"""Replay: losses from cached activations equal full evaluations; the caller's model is untouched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoshrink.allocate.replay import Replay, build_site, with_compressed
from autoshrink.methods.lowrank import LowRankConfig, LowRankWeight
from autoshrink.methods.quant import QuantConfig
from autoshrink.models.discover import discover_sites
from autoshrink.models.lstm_lm import LSTMLM
from autoshrink.models.training import evaluate_perplexity
from autoshrink.plan import compress
from autoshrink.sites import SiteStats

from allocate_fixtures import tiny_ids, tiny_lstm


class Wrapped(nn.Module):
    """The same LM behind a module the replay does not know: it must take the full-pass path."""

    def __init__(self, inner: LSTMLM):
        super().__init__()
        self.inner = inner

    def forward(self, ids, state=None):
        return self.inner(ids, state)


@pytest.mark.parametrize("site", ["encoder", "rnn.0.ih", "rnn.1.hh", "decoder"])
def test_replayed_loss_equals_a_full_evaluation_of_the_compressed_model(site):
    model, ids = tiny_lstm(), tiny_ids()
    sites = {s.name: s for s in discover_sites(model)}
    replay = Replay(model, ids)
    assert replay.dense_loss == pytest.approx(math.log(evaluate_perplexity(model, ids)), abs=1e-5)
    config = LowRankConfig(rank=3)
    loss = replay.loss(sites, {site: build_site(model, sites[site], config)})
    full = math.log(evaluate_perplexity(compress(model, {site: config}), ids))
    assert loss == pytest.approx(full, abs=1e-5)
    assert abs(loss - replay.dense_loss) > 1e-3  # rank 3 of 12 changes the model


def test_joint_loss_of_several_sites_and_the_unstaged_path_agree():
    model, ids = tiny_lstm(), tiny_ids()
    plan = {"encoder": LowRankConfig(rank=4), "rnn.1.ih": QuantConfig(bits=3), "decoder": LowRankConfig(rank=5)}
    full = math.log(evaluate_perplexity(compress(model, plan), ids))
    for target, prefix in ((model, ""), (Wrapped(model), "inner.")):
        sites = {s.name: s for s in discover_sites(target)}
        replay = Replay(target, ids)
        assert replay.staged == (target is model)
        built = {prefix + n: build_site(target, sites[prefix + n], c) for n, c in plan.items()}
        assert replay.loss(sites, built) == pytest.approx(full, abs=1e-5)


def test_the_callers_model_is_never_changed():
    model, ids = tiny_lstm(), tiny_ids()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sites = {s.name: s for s in discover_sites(model)}
    built = {"rnn.0.hh": build_site(model, sites["rnn.0.hh"], LowRankConfig(rank=2))}
    copy = with_compressed(model, sites, built)
    assert type(copy.rnn[0].hh).__name__ == "CompressedLinear"
    assert type(model.rnn[0].hh) is nn.Linear and type(model.rnn[1].hh) is nn.Linear
    assert copy.rnn[1] is model.rnn[1] and copy.decoder is model.decoder  # untouched parts are shared, not copied
    Replay(model, ids).loss(sites, built)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s.name for s in discover_sites(model)] == list(sites)


def test_a_site_s_statistics_reach_its_build(monkeypatch):
    model = tiny_lstm()
    site = next(s for s in discover_sites(model) if s.name == "rnn.0.ih")
    seen = {}
    plain = LowRankWeight.build.__func__

    def build(cls, weight, site, config, stats=None):
        seen["stats"] = stats
        return plain(cls, weight, site, config, stats)

    monkeypatch.setattr(LowRankWeight, "build", classmethod(build))
    mine, other = SiteStats(moment=torch.eye(site.shape[1])), SiteStats(moment=torch.eye(3))
    build_site(model, site, LowRankConfig(rank=2), stats={"rnn.0.ih": mine, "decoder": other})
    assert seen["stats"] is mine
    build_site(model, site, LowRankConfig(rank=2))  # no statistics: a plain build
    assert seen["stats"].moment is None
