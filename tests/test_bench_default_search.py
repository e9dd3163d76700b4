"""bench/default_search: the default search timed from an empty cache, reported with its goal lines."""

from __future__ import annotations

import json

import pytest

from autoshrink.bench import default_search
from autoshrink.bench.search_runs import trial_rows, winner


def test_the_report_lists_every_trained_trial_and_generates_its_goal_lines(tiny_run):
    rows = trial_rows(tiny_run.run_dir)
    quick = default_search.markdown(tiny_run.run_dir, "autoshrink search ...", 61.0, (0.2, 1.1), 2**30)
    slow = default_search.markdown(tiny_run.run_dir, "autoshrink search ...", 16 * 60.0, (2.5, 3.0), 2**30)
    assert quick.count("\n| ") - 1 == len(rows)
    assert "Within 15 minutes: **yes** (1.0 min)" in quick and "otherwise idle" in quick
    assert "Within 15 minutes: **no** (16.0 min)" in slow and "upper bound" in slow
    best = winner(rows)
    assert f"Best trial: {best['trial']}, {best['origin']}, val ppl {best['val_ppl']:.2f}" in quick


def test_the_best_trial_is_compared_with_a_stopped_control_at_the_control_s_steps(tiny_run, monkeypatch):
    rows = [
        {
            "trial": 0,
            "origin": "allocation (knapsack)",
            "state": "COMPLETE",
            "steps": 80,
            "val_ppl": 39.0,
            "feasible": True,
            "stored_bytes": 10,
            "curve": {27: 43.0, 80: 39.0},
        },
        {
            "trial": 1,
            "origin": "uniform lowrank",
            "state": "PRUNED",
            "steps": 27,
            "val_ppl": 42.0,
            "feasible": True,
            "stored_bytes": 10,
            "curve": {27: 42.0},
        },
    ]
    monkeypatch.setattr(default_search, "trial_rows", lambda run_dir: rows)
    text = default_search.markdown(tiny_run.run_dir, "cmd", 60.0, (0.1, 0.1), 1)
    assert "(the best trial there: 43.00): **not beaten**" in text
    rows[0]["curve"][27] = 41.0
    text = default_search.markdown(tiny_run.run_dir, "cmd", 60.0, (0.1, 0.1), 1)
    assert "(the best trial there: 41.00): **a per-site plan wins**" in text


def test_the_best_uniform_control_is_taken_at_the_most_steps_a_control_reached():
    rows = [
        {
            "trial": 0,
            "origin": "allocation (knapsack)",
            "state": "COMPLETE",
            "steps": 80,
            "val_ppl": 40.0,
            "feasible": True,
        },
        {"trial": 1, "origin": "uniform lowrank", "state": "COMPLETE", "steps": 80, "val_ppl": 39.0, "feasible": True},
        {"trial": 2, "origin": "uniform prune", "state": "PRUNED", "steps": 27, "val_ppl": 30.0, "feasible": True},
    ]
    assert default_search._uniform_best(rows)["trial"] == 1  # a stopped control is not compared at lower steps


def test_the_search_runs_with_an_empty_cache_and_the_report_is_written(tiny_model_dir, text_file, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("roles:\n  recurrent:\n    lowrank: {rank: {low: 2, high: 16, log: true}, bits: [8]}\n")
    run, out = tmp_path / "run", tmp_path / "report.md"
    extra = ["--model", str(tiny_model_dir), "--data", str(text_file), "--space", str(space)]
    extra += ["--trials", "2", "--finetune-steps", "2", "--sampler", "random"]
    assert default_search.main(["--budget", "2x", "--run-dir", str(run), "--out", str(out), "--", *extra]) == 0
    text = out.read_text()
    assert "Wall time:" in text and "Best trial:" in text
    recorded = json.loads((run / "default_search.json").read_text())
    assert recorded["wall_s"] > 0 and recorded["peak_rss"] > 0
    out.unlink()
    assert default_search.main(["--run-dir", str(run), "--out", str(out), "--report-only"]) == 0
    assert f"({recorded['wall_s']:,.0f} s)" in out.read_text()  # reported again from what was measured


def test_report_only_without_a_measured_search_is_one_line_and_exit_2(tiny_run, capsys):
    with pytest.raises(SystemExit) as e:
        default_search.main(["--run-dir", str(tiny_run.run_dir), "--report-only"])
    assert e.value.code == 2 and "default_search.json not found" in capsys.readouterr().err


def test_a_folder_already_holding_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        default_search.main(["--run-dir", str(tmp_path / "run")])
    assert e.value.code == 2 and "not empty" in capsys.readouterr().err
