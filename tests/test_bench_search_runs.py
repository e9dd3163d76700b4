"""bench/search_runs: each run's trials with their origin, and the winner at full steps."""

from __future__ import annotations

import pytest

from autoshrink.bench import search_runs
from autoshrink.search import run_folder
from autoshrink.search.study import load_study, origin_of


def test_every_trained_trial_is_listed_with_its_origin_and_the_best_complete_one_wins(tiny_run):
    rows = search_runs.trial_rows(tiny_run.run_dir)
    trials = {t.number: t for t in load_study(tiny_run.run_dir).get_trials()}
    assert rows and all(r["origin"] == origin_of(trials[r["trial"]]) for r in rows)
    assert all(r["val_ppl"] == trials[r["trial"]].user_attrs["val_ppl"] for r in rows)
    best = search_runs.winner(rows)
    done = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"]]
    assert best["val_ppl"] == min(r["val_ppl"] for r in done if r["steps"] == max(d["steps"] for d in done))
    text = search_runs.markdown([tiny_run.run_dir], "cmd")
    assert f"Best: trial {best['trial']}, {best['origin']}" in text
    assert text.count("\n| ") - 1 == len(rows)  # the header row, then one row per trial


def test_a_stopped_trial_never_wins_over_complete_ones():
    rows = [
        {"trial": 0, "state": "COMPLETE", "steps": 80, "val_ppl": 40.0, "feasible": True},
        {"trial": 1, "state": "PRUNED", "steps": 27, "val_ppl": 30.0, "feasible": True},
        {"trial": 2, "state": "COMPLETE", "steps": 80, "val_ppl": 35.0, "feasible": False},
        {"trial": 3, "state": "COMPLETE", "steps": 40, "val_ppl": 20.0, "feasible": True},
    ]
    assert search_runs.winner(rows)["trial"] == 0
    assert search_runs.winner(rows[1:2]) is None


def test_a_folder_that_is_not_a_run_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        search_runs.main([str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "no run folder" in capsys.readouterr().err


def test_each_run_names_the_commits_its_invocations_ran(tiny_run):
    from autoshrink.provenance import source_commit

    info = run_folder.read_run(tiny_run.run_dir)
    assert info["commits"] == [source_commit()] * len(info["invocations"])
    text = search_runs.markdown([tiny_run.run_dir], "cmd")
    expected = f"commit {source_commit()}" if source_commit() else "commit not recorded"
    assert f"Code: {expected}" in text and "Space: `" in text
    assert search_runs.ran_with({"invocations": ["a"]}).startswith("commit not recorded")
    assert search_runs.ran_with({"commits": [None, "abc1234", "abc1234", "def5678"]}) == "commit abc1234, def5678"
