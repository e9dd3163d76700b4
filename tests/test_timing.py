"""Latency and tokens/s as a median of repeats with their spread (IQR)."""

from __future__ import annotations

import re

import pytest

import autoshrink
from autoshrink.cli import main
from autoshrink.measure.latency import measure_latency, measure_throughput, reference_input
from autoshrink.measure.timing import Spread


def test_spread_is_the_median_and_quartiles_and_reads_as_eval_prints_it():
    s = Spread.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s == Spread(3.0, 2.0, 4.0, 5)
    assert Spread(3.52, 3.41, 3.70, 20).describe("ms") == "3.52 ms (median of 20, IQR 3.41-3.70)"
    assert s.scaled(1e3) == Spread(3000.0, 2000.0, 4000.0, 5)
    tokens = s.inverted(12.0)  # seconds per pass -> tokens per second: the slow quartile becomes the low one
    assert tokens == Spread(4.0, 3.0, 6.0, 5)
    assert s.record("latency_ms") == {"latency_ms": 3.0, "latency_ms_iqr": [2.0, 4.0], "latency_ms_repeats": 5}


def test_latency_and_throughput_are_measured_repeatedly(tiny_model_dir):
    model = autoshrink.load(str(tiny_model_dir))
    lat = measure_latency(model, reference_input(len(model.vocab)), repeats=7, warmup=1)
    assert lat.repeats == 7 and 0 < lat.q1 <= lat.median <= lat.q3
    ids = reference_input(len(model.vocab), tokens=1000).flatten()
    tps = measure_throughput(model, ids, repeats=5, warmup=1)
    assert tps.repeats == 5 and 0 < tps.q1 <= tps.median <= tps.q3


def test_eval_prints_and_records_the_spread(tiny_model_dir, text_file, capsys):
    result = autoshrink.evaluate(str(tiny_model_dir), data=str(text_file))
    for key in ("latency_ms", "tokens_per_s"):
        q1, q3 = result[f"{key}_iqr"]
        assert q1 <= result[key] <= q3 and result[f"{key}_repeats"] == 20
    assert main(["eval", str(tiny_model_dir), "--data", str(text_file)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"latency [\d.]+ ms \(median of 20, IQR [\d.]+-[\d.]+\)", out), out
    assert re.search(r"[\d,]+ tokens/s \(median of 20, IQR [\d,]+-[\d,]+\)", out), out


@pytest.mark.parametrize("values", [[2.5], []])
def test_a_spread_of_one_or_no_value_is_that_value(values):
    s = Spread.of(values)
    assert s.repeats == len(values) and (s.median == 2.5 if values else s.median != s.median)
