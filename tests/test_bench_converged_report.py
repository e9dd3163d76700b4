"""bench/converged_report: the converged tier's table and goal lines alone, computed from the entrants' results."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from autoshrink.bench import converged_report
from autoshrink.bench.reference import ROWS, entrant_dir


def _result(test_ppl: float, plan: dict) -> dict:
    return {
        "test_ppl": test_ppl,
        "val_ppl": test_ppl,
        "stored_bytes": 1000,
        "tokens_per_s": 1.0,
        "latency_ms": 1.0,
        "train_seconds": 60.0,
        "plan": plan,
        "protocol": 2,
        "tier": "converged",
        "commit": "abc1234",
    }


def test_the_report_computes_each_goal_line_from_the_entrants_it_finds(bench_setup, tmp_path):
    setup = replace(bench_setup, tier="converged", converged_work=tmp_path / "converged")
    row = ROWS["25x"]
    per_site = {"rnn.0.ih": {"method": "lowrank", "rank": 8}, "decoder": {"method": "quant", "bits": 4}}
    for entrant, result in (
        ("dense", _result(40.0, {})),
        ("best-uniform", {**_result(44.0, {"rnn.0.ih": {"method": "lowrank", "rank": 4}}), "method": "lowrank"}),
        ("autoshrink", _result(40.2, per_site)),
    ):
        out = entrant_dir(setup.converged_work, "dense" if entrant == "dense" else row.name, entrant)
        out.mkdir(parents=True)
        (out / "bench.json").write_text(json.dumps(result))
    text = converged_report.markdown(setup, [row], "python -m autoshrink.bench.converged_report --rows 25x")
    assert "| 25x | **autoshrink** (no warm start) | 40.20 | +0.5% |" in text  # no search folder here
    # autoshrink +0.5% against the best uniform's +10.0%: beats it, within the 10% goal, 0.05x its increase
    assert "| 25x | +0.5% | lowrank +10.0% | not run | yes | - | within 10% | yes | yes (0.05x) |" in text


def test_a_row_outside_the_converged_tier_is_refused_with_exit_status_2(capsys):
    with pytest.raises(SystemExit) as stop:
        converged_report.main(["--rows", "50x"])
    assert stop.value.code == 2 and "invalid choice: '50x'" in capsys.readouterr().err
