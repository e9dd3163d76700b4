"""Latency: the reference input, the measured forward, and the cached per-site estimate."""

from __future__ import annotations

import json
import math

import pytest

from autoshrink.methods import config_from_dict
import torch

from autoshrink.errors import UserError
from autoshrink.measure.latency import LatencyTable, measure_latency_ms, measure_plan_ms, reference_input
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig

torch.set_num_threads(1)

PLAN = {"decoder": {"method": "lowrank", "rank": 4}, "rnn.1.hh": {"method": "quant", "bits": 8}}


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return LSTMLM(LSTMLMConfig(200, 16, 16, 2, 0.0)).eval()


def table(model, **kw):
    return LatencyTable(model, repeats=3, warmup=1, **kw)


def test_reference_input_shape_and_determinism():
    ids = reference_input(200)
    assert ids.shape == (35, 1) and ids.dtype == torch.long
    assert torch.equal(ids, reference_input(200))
    assert int(ids.min()) >= 0 and int(ids.max()) < 200
    assert reference_input(50, tokens=7, batch=3).shape == (7, 3)
    with pytest.raises(UserError):
        reference_input(0)


def test_measure_latency_is_positive(model):
    ms = measure_latency_ms(model, reference_input(200), repeats=3, warmup=1)
    assert 0 < ms < 10_000
    assert not model.training


def test_empty_plan_estimate_is_dense(model):
    t = table(model)
    assert t.estimate_ms({}) == t.dense_ms
    assert t.measurements == 1  # the dense model, once


def test_estimate_positive_finite_and_cached(model, tmp_path):
    path = tmp_path / "lat.json"
    t = table(model, path=path)
    est = t.estimate_ms(PLAN)
    assert est > 0 and math.isfinite(est)
    n = t.measurements
    # dense model + (dense, compressed) per planned site; an LSTM matrix's dense side costs
    # nothing extra (the fused kernel multiplies it either way) and is not measured
    lstm = sum(1 for name in PLAN if name.startswith("rnn."))
    assert n == 1 + 2 * len(PLAN) - lstm
    assert t.estimate_ms(PLAN) == est and t.measurements == n  # cache hit: nothing re-measured
    t2 = table(model, path=path)  # resumed: everything from the JSON file
    assert t2.estimate_ms(PLAN) == pytest.approx(est)
    assert t2.measurements == 0


def test_json_cache_round_trips(model, tmp_path):
    path = tmp_path / "sub" / "lat.json"
    t = table(model, path=path)
    t.estimate_ms({"encoder": {"method": "prune", "density": 0.2}})
    data = json.loads(path.read_text())
    assert len(data["entries"]) == len(t.cache)
    assert table(model, path=path).cache == t.cache
    path.write_text("not json")
    with pytest.raises(UserError):
        table(model, path=path)


def test_compressed_lstm_matrices_cost_only_their_rebuild(model):
    t = table(model)
    site = next(s for s in t.sites if s.name == "rnn.1.hh")
    assert t.site_seconds(site, None) == 0.0  # multiplied inside the fused kernel, dense or not
    rebuild = t.site_seconds(site, config_from_dict({"method": "lowrank", "rank": 4}))
    assert 0 < rebuild < t.dense_ms / 1e3 * 10


def test_unknown_site_is_a_user_error(model):
    with pytest.raises(UserError):
        table(model).estimate_ms({"nope": {"method": "quant"}})


def test_estimate_tracks_measurement_generously(model):
    plan = {"rnn.0.hh": {"method": "lowrank", "rank": 4}}
    est = LatencyTable(model, repeats=5, warmup=2).estimate_ms(plan)
    measured = measure_plan_ms(model, plan, repeats=5, warmup=2)
    assert measured / 5 < est < measured * 5
