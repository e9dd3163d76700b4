"""`autoshrink front --plot`: readable with outliers (log perplexity axis, outliers clipped and
labelled), units on the byte and latency ticks, the dense perplexity on its marker, no two labels
on top of each other."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pandas as pd
from matplotlib.text import Text

from autoshrink.front.plot import draw, figure, nice_ticks, plot_data
from autoshrink.front.table import Front
from autoshrink.search.run_folder import front_rows

DENSE_BYTES, DENSE_PPL = 24_734_792, 35.48


def make_front(points: list[tuple[str, float, float]], objective: str = "stored_bytes", **info) -> Front:
    """A Front from (state, x, val ppl) points, numbered in order; no study needed."""
    rows = [
        {
            "number": n,
            "state": state,
            "stored_bytes": x if objective == "stored_bytes" else 900_000,
            "ratio": 25.0,
            "latency_ms": x if objective == "latency_ms" else 5.0,
            "val_ppl": ppl,
            "seconds": 60.0,
            "steps": 80,
            "methods": "",
            "origin": "sampled",
            "plan": "{}",
            "feasible": True,
            "note": "",
        }
        for n, (state, x, ppl) in enumerate(points)
    ]
    trials = pd.DataFrame(rows)
    run_info = {
        "budget": "25x",
        "budget_kind": "ratio",
        "max_bytes": 989_391,
        "dense_bytes": DENSE_BYTES,
        "dense_val_ppl": DENSE_PPL,
        "model": "kjv-lstm",
        **info,
    }
    return Front(Path("run"), run_info, trials, front_rows(trials, objective).reset_index(drop=True), objective)


FRONT = [
    ("COMPLETE", 600_000, 120.0),
    ("COMPLETE", 700_000, 90.0),
    ("COMPLETE", 980_000, 57.0),
    ("PRUNED", 900_000, 140.0),
]
OUTLIER = ("COMPLETE", 985_000, 120.0 * 40)  # dominated, 40x the front's worst perplexity


def tick_labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


def test_an_outlier_is_clipped_and_labelled_and_the_axis_is_log():
    d = plot_data(make_front(FRONT + [OUTLIER]))
    assert [n for _, _, n in d.clipped] == [4]
    low, high = d.ylim
    assert max(y for _, y, _ in d.front) < high < OUTLIER[2] and low < DENSE_PPL
    ax = figure(d).axes[0]
    assert ax.get_yscale() == "log" and ax.get_ylim() == d.ylim
    texts = [t.get_text() for t in ax.texts]
    assert "#4: 4,800" in texts  # the clipped trial keeps its number and value, at the edge
    # The front and the dense model use more than half of the (log) height, not its bottom sixth.
    assert math.log(max(y for _, y, _ in d.front) / DENSE_PPL) / math.log(high / low) > 0.5


def test_nothing_is_clipped_without_an_outlier():
    d = plot_data(make_front(FRONT))
    assert d.clipped == ()
    assert all(d.ylim[0] <= y <= d.ylim[1] for _, y, _ in d.trials)
    assert d.ylim[0] <= DENSE_PPL


def test_byte_ticks_carry_units_and_the_dense_marker_its_perplexity(tmp_path):
    d = plot_data(make_front(FRONT + [OUTLIER]))
    ax = figure(d).axes[0]
    xs = tick_labels(ax.xaxis)
    assert len(xs) >= 3 and all(label.endswith((" KB", " MB", " B")) for label in xs), xs
    assert "1 MB" in xs
    assert all(label.replace(",", "").isdigit() for label in tick_labels(ax.yaxis))  # plain numbers, no 10^x
    assert f"dense {DENSE_PPL:.2f}" in [t.get_text() for t in ax.texts]
    assert "12,000 valid tokens" in ax.get_ylabel()  # the validation slice is named
    assert draw(d, tmp_path / "front.png").read_bytes()[:4] == b"\x89PNG"


def test_latency_ticks_carry_ms():
    points = [("COMPLETE", 2.0, 60.0), ("COMPLETE", 3.0, 50.0), ("COMPLETE", 8.0, 45.0)]
    f = make_front(points, objective="latency_ms", budget="4ms", budget_kind="latency", max_bytes=None)
    ax = figure(plot_data(f)).axes[0]
    xs = tick_labels(ax.xaxis)
    assert xs and all(label.endswith(" ms") for label in xs), xs


def test_labels_crowding_the_budget_line_do_not_overlap():
    crowd = [("COMPLETE", 960_000 + 5_000 * i, 60.0 - 0.4 * i) for i in range(6)]  # a front along the budget
    d = plot_data(make_front(crowd + [OUTLIER]))
    assert len(d.front) == 6
    fig = figure(d)
    renderer = fig.canvas.get_renderer()
    boxes = [Text.get_window_extent(t, renderer) for t in fig.axes[0].texts]
    assert len(boxes) == 6 + 3  # the front's numbers, the dense label, the budget label, the clipped trial
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)


def test_nice_ticks_are_round_and_few():
    ticks = nice_ticks(33.0, 375.0)
    assert 3 <= len(ticks) <= 8 and all(33.0 <= t <= 375.0 for t in ticks)
    assert 50 in ticks and 100 in ticks
    assert len(nice_ticks(500_000, 30_000_000)) <= 8
