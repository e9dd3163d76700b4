"""`autoshrink front`: the front of a finished and of a running study, csv/json/table, the plot."""

from __future__ import annotations

import io
import json
import shutil

import optuna
import pandas as pd
import pytest

from autoshrink.search import study as study_db
from autoshrink.cli import main
from autoshrink.errors import UserError
from autoshrink.front.plot import plot, plot_data
from autoshrink.front.table import front_table, read_front, render
from autoshrink.search.config import SearchConfig
from autoshrink.search.controller import search

SPACE = """
roles:
  embedding: {lowrank: {rank: {low: 2, high: 8}, bits: [8, 32]}, quant: {bits: [2, 4]}}
  softmax: {lowrank: {rank: {low: 2, high: 8}, bits: [8, 32]}, quant: {bits: [2, 4]}}
  recurrent: {lowrank: {rank: {low: 2, high: 8}}, quant: {bits: [4, 8]}}
"""


def make_run(run_dir, trials: list[dict], **info) -> optuna.Study:
    """A run folder built directly: run.json and a study holding `trials` (user attrs, plus a
    `state`, COMPLETE by default); no search needed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    study = study_db.open_study(run_dir, "random", 0)
    objective = "latency_ms" if info.get("budget_kind") == "latency" else "stored_bytes"
    for attrs in trials:
        attrs = dict(attrs)
        state = optuna.trial.TrialState[attrs.pop("state", "COMPLETE")]
        attrs.setdefault("plan", {"rnn.0.hh": {"method": "lowrank", "rank": 4}})
        values = [attrs["val_ppl"], float(attrs[objective])] if state == optuna.trial.TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(state=state, values=values, user_attrs=attrs))
    run_info = {
        "budget": "4x",
        "budget_kind": "ratio",
        "max_bytes": 5000,
        "dense_bytes": 20000,
        "dense_val_ppl": 30.0,
        "model": "kjv-lstm-tiny",
        "data": "kjv",
        "seed": 0,
        **info,
    }
    (run_dir / "run.json").write_text(json.dumps(run_info))
    return study


TRIALS = [  # (stored bytes, val ppl): 0 and 1 are the front; 2 is dominated, 3 over budget, 4 stopped
    {"stored_bytes": 1000, "ratio": 20.0, "latency_ms": 2.0, "val_ppl": 50.0, "feasible": True},
    {"stored_bytes": 3000, "ratio": 6.7, "latency_ms": 3.0, "val_ppl": 40.0, "feasible": True},
    {"stored_bytes": 4000, "ratio": 5.0, "latency_ms": 1.0, "val_ppl": 45.0, "feasible": True},
    {"stored_bytes": 6000, "ratio": 3.3, "latency_ms": 4.0, "val_ppl": 35.0, "feasible": False},
    {"state": "PRUNED", "stored_bytes": 2000, "ratio": 10.0, "val_ppl": 90.0, "steps": 20},
]


@pytest.fixture(scope="module")
def searched(tiny_model_dir, text_file, tmp_path_factory):
    """A real (tiny) search: 2 trials."""
    space = tmp_path_factory.mktemp("space") / "space.yaml"
    space.write_text(SPACE)
    config = SearchConfig(
        "4x",
        model=str(tiny_model_dir),
        data=str(text_file),
        space=str(space),
        trials=2,
        finetune_steps=4,
        run_dir=tmp_path_factory.mktemp("runs") / "run",
        sampler="random",
    )
    return search(config, log=lambda line: None).run_dir


def test_front_of_a_finished_search_matches_front_csv(searched, capsys):
    table = front_table(searched)
    assert list(table["number"]) == list(pd.read_csv(searched / "front.csv")["number"])
    assert main(["front", str(searched)]) == 0
    out = capsys.readouterr().out
    assert "trial" in out and "val ppl" in out
    for n in table["number"]:
        assert f"trial {n}" in out or f" {n} " in out


def test_front_is_the_feasible_completed_non_dominated_trials(tmp_path):
    make_run(tmp_path / "run", TRIALS)
    table = front_table(tmp_path / "run")
    assert list(table["number"]) == [0, 1]  # sorted by stored bytes
    assert list(table["ratio"]) == [20.0, 6.7]


def test_csv_and_json_outputs_parse(tmp_path, capsys):
    make_run(tmp_path / "run", TRIALS)
    assert main(["front", str(tmp_path / "run"), "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame["number"]) == [0, 1]
    assert {"number", "state", "stored_bytes", "ratio", "latency_ms", "val_ppl", "seconds", "plan"} <= set(
        frame.columns
    )
    assert main(["front", str(tmp_path / "run"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["number"] for r in rows] == [0, 1]
    assert rows[0]["plan"] == {"rnn.0.hh": {"method": "lowrank", "rank": 4}} and rows[0]["seconds"] is None


def test_a_running_study_still_renders(searched, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(searched, run)
    study = optuna.load_study(study_name=study_db.STUDY_NAME, storage=f"sqlite:///{run / 'study.db'}")
    study.ask()  # a trial in progress: RUNNING, no attributes yet
    f = read_front(run)
    assert "RUNNING" in set(f.trials["state"])
    assert main(["front", str(run)]) == 0
    assert "still running" in capsys.readouterr().out
    for fmt in ("csv", "json"):
        assert main(["front", str(run), "--format", fmt]) == 0
    # A run whose only trial is still running: an empty front, every view still works.
    fresh = tmp_path / "fresh"
    make_run(fresh, []).ask()
    assert "front is empty" in render(read_front(fresh), "table")
    assert json.loads(render(read_front(fresh), "json")) == []
    assert plot(fresh, tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_writes_a_png_with_front_dense_and_budget(tmp_path, capsys):
    make_run(tmp_path / "run", TRIALS)
    d = plot_data(read_front(tmp_path / "run"))
    assert [n for _, _, n in d.front] == [0, 1] and d.dense == (20000.0, 30.0) and d.budget == 5000
    assert len(d.trials) == 5  # every measured trial, faded
    path = tmp_path / "plots" / "front.png"
    assert main(["front", str(tmp_path / "run"), "--format", "json", "--plot", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)  # stdout stays parseable; the note goes to stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latency_runs_plot_latency(tmp_path):
    make_run(tmp_path / "run", TRIALS[:3], budget="3.5ms", budget_kind="latency", max_bytes=None)
    f = read_front(tmp_path / "run")
    assert f.objective == "latency_ms" and list(f.front["number"]) == [2, 1]  # 0 is slower and worse than 2
    d = plot_data(f)
    assert d.budget == 3.5 and d.xlabel.startswith("latency")
    assert plot(tmp_path / "run", tmp_path / "lat.png").stat().st_size > 0


@pytest.mark.parametrize("setup", ["missing", "no_study", "no_run_json"])
def test_bad_run_folders_are_one_line_and_exit_2(setup, tmp_path, capsys):
    run = tmp_path / "run"
    if setup == "no_study":
        run.mkdir()
        (run / "run.json").write_text("{}")
    elif setup == "no_run_json":
        run.mkdir()
    with pytest.raises(UserError):
        read_front(run)
    assert main(["front", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0]


def test_each_front_plan_says_where_it_came_from(tmp_path, capsys):
    trials = [
        {**TRIALS[0], "allocated": "allocation (knapsack)"},
        {**TRIALS[1], "warm_start": "uniform lowrank"},
        *TRIALS[2:],
    ]
    make_run(tmp_path / "run", trials)
    assert list(front_table(tmp_path / "run")["origin"]) == ["allocation (knapsack)", "uniform lowrank"]
    assert main(["front", str(tmp_path / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].index("val ppl") < lines[1].index("from") < lines[1].index("methods")
    assert "allocation (knapsack)" in lines[2] and "uniform lowrank" in lines[3]
    assert main(["front", str(tmp_path / "run"), "--format", "csv"]) == 0
    assert list(pd.read_csv(io.StringIO(capsys.readouterr().out))["origin"]) == [
        "allocation (knapsack)",
        "uniform lowrank",
    ]
