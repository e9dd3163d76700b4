"""The Ray backend: the searcher's bookkeeping without a cluster (fed the calls Tune makes), and
one real 2-worker local search on kjv-lstm-tiny."""

from __future__ import annotations

import json
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

from autoshrink.allocate import profile as profile_module
from autoshrink.search import study as study_db
from autoshrink.search.budget import check_feasible, parse_budget
from autoshrink.search.space import smallest_plan
from autoshrink.cli import main
from autoshrink.data import load_lm_data
from autoshrink.errors import UserError
from autoshrink.models import discover_sites
from autoshrink.plan import ModelFile, dense_bytes, parse_plan, plan_stored_bytes
from autoshrink.search import ray_backend, run_folder
from autoshrink.search.config import SearchConfig
from autoshrink.search.controller import SearchContext
from autoshrink.search.ray_backend import STEP, Asha, StudySearcher
from autoshrink.search.space import load_space
from autoshrink.search.trial import TrialSettings
from conftest import search_argv
from test_search import SPACE


@pytest.fixture
def ctx(tiny_model_dir, text_file, tmp_path):
    """The search context the controller builds, for a 4x budget on the tiny model."""
    import autoshrink

    dense = autoshrink.load(str(tiny_model_dir)).cpu().eval()
    data = load_lm_data(str(text_file), vocab=dense.vocab)
    (tmp_path / "space.yaml").write_text(SPACE)
    space, sites, freqs = load_space(tmp_path / "space.yaml"), discover_sites(dense), data.vocab.freqs
    budget, nbytes, model_file = parse_budget("4x"), dense_bytes(dense), ModelFile.of(dense)
    max_bytes = check_feasible(budget, space, sites, nbytes, freqs, model_file)
    return SearchContext(
        dense,
        data,
        sites,
        space,
        budget,
        nbytes,
        TrialSettings(finetune_steps=10),
        freqs,
        max_bytes,
        model_file,
        fallback=smallest_plan(space, sites, freqs),
    )


@pytest.fixture
def study(tmp_path):
    (tmp_path / "run").mkdir()
    return study_db.open_study(tmp_path / "run", "random", 0)


def _complete(study, config, val_ppl=50.0):
    """The final report of a worker that trained all its steps."""
    nbytes = study.trials[config["number"]].user_attrs["stored_bytes"]
    return {
        "complete": True,
        STEP: 10,
        "val_ppl": val_ppl,
        "stored_bytes": nbytes,
        "ratio": 4.5,
        "latency_ms": 1.0,
        "seconds": 2.0,
        "finetune_seconds": 1.5,
        "build_seconds": 0.5,
        "steps": 10,
        "curve": json.dumps({"5": val_ppl + 10, "10": val_ppl}),
    }


def test_an_asha_stopped_trial_is_pruned_with_its_steps_and_never_on_the_front(ctx, study, tmp_path):
    told = []
    searcher = StudySearcher(
        ctx,
        study,
        trials=3,
        callbacks=[
            lambda st, t: None if t.user_attrs.get(study_db.REPAIRED) else told.append((t.number, t.state.name))
        ],
    )
    done, stopped, broken = (searcher.suggest(i) for i in ("done", "stopped", "broken"))
    assert searcher.suggest("more") == searcher.FINISHED  # three trials asked for, three live
    for config in (done, stopped, broken):
        assert plan_stored_bytes(ctx.sites, parse_plan(config["plan"]), ctx.freqs, ctx.model_file) <= ctx.max_bytes
    searcher.on_trial_result("done", {STEP: 5, "val_ppl": 60.0})
    searcher.on_trial_complete("done", _complete(study, done, 50.0))
    # ASHA stops the trial at step 5 with a *better* perplexity than the complete one: as Ray's
    # OptunaSearch would, the last result carries the metrics, yet it must not be a front point.
    searcher.stopped_early["stopped"] = 5
    searcher.on_trial_complete("stopped", {STEP: 5, "val_ppl": 20.0, "time_total_s": 3.0})
    searcher.on_trial_complete("broken", {"failed": "loss became nan at step 3"})

    trials = {t.number: t for t in study.get_trials()}
    ok, pruned, failed = trials[done["number"]], trials[stopped["number"]], trials[broken["number"]]
    assert ok.state.name == "COMPLETE" and ok.values == [50.0, float(ok.user_attrs["stored_bytes"])]
    assert ok.user_attrs["feasible"] and ok.user_attrs["curve"] == {"5": 60.0, "10": 50.0}
    assert pruned.state.name == "PRUNED" and pruned.values is None
    assert pruned.user_attrs["steps"] == 5 and pruned.user_attrs["val_ppl"] == 20.0
    assert "stopped by ASHA at step 5" in pruned.user_attrs["note"] and pruned.user_attrs["curve"] == {"5": 20.0}
    assert failed.state.name == "FAIL" and "nan" in failed.user_attrs["note"]
    assert sorted(told) == sorted([(ok.number, "COMPLETE"), (pruned.number, "PRUNED"), (failed.number, "FAIL")])
    front = run_folder.write(tmp_path / "run", study)
    assert list(front["number"]) == [ok.number]
    rows = pd.read_csv(tmp_path / "run" / "trials.csv").set_index("number")
    assert rows.loc[pruned.number, "state"] == "PRUNED" and rows.loc[pruned.number, "steps"] == 5
    assert list(pd.read_csv(tmp_path / "run" / "front.csv")["number"]) == [ok.number]


def test_infeasible_plans_are_told_pruned_and_never_suggested(ctx, study):
    real, calls = ctx.repair, []

    def repair(plan):  # the first two draws have no repair that fits
        calls.append(plan)
        return None if len(calls) <= 2 else real(plan)

    ctx.repair = repair
    told = []
    searcher = StudySearcher(
        ctx,
        study,
        trials=4,
        callbacks=[lambda st, t: None if t.user_attrs.get(study_db.REPAIRED) else told.append(t.number)],
    )
    config = searcher.suggest("a")
    assert config["number"] >= 2 and told == [0, 1]  # later draws over the budget are repaired into new trials
    for t in study.get_trials()[:2]:
        assert t.state.name == "PRUNED" and "infeasible" in t.user_attrs["note"] and "steps" not in t.user_attrs
    assert study_db.counted_trials(study) == 2  # counted toward --trials, as the Optuna backend does
    searcher.suggest("b")
    assert searcher.suggest("c") == searcher.FINISHED


def test_no_trial_starts_after_the_timeout(ctx, study):
    import time

    late = StudySearcher(ctx, study, trials=4, deadline=time.time() - 1)
    assert late.suggest("a") == late.FINISHED and study.get_trials() == []


def test_a_trial_left_running_is_failed_and_its_plan_retried(ctx, study):
    first = StudySearcher(ctx, study, trials=2)
    lost = first.suggest("x")  # the driver dies here: the trial stays RUNNING in study.db
    assert study.trials[lost["number"]].state.name == "RUNNING"
    assert len(study_db.fail_orphans(study)) == 1  # its search (`first`) is no longer active
    assert study.trials[lost["number"]].state.name == "FAIL"
    again = StudySearcher(ctx, study, trials=2)
    retry = again.suggest("y")
    assert retry["plan"] == lost["plan"] and retry["number"] != lost["number"]
    assert study.trials[retry["number"]].system_attrs["failed_trial"] == lost["number"]
    assert study.trials[retry["number"]].user_attrs["note"] == f"retry of trial {lost['number']}"
    again.on_trial_complete("y", _complete(study, retry))
    assert study_db.counted_trials(study) == 1  # the crash cost no trial
    # Stopped by the search ending (time budget, Ctrl-C) rather than by ASHA: retried too.
    cut = again.suggest("z")
    again.on_trial_complete("z", {STEP: 5, "val_ppl": 30.0})
    assert study.trials[cut["number"]].state.name == "FAIL"
    assert [t.params for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))] == [
        study.trials[cut["number"]].params
    ]


def test_asha_stops_the_worse_trial_at_the_first_rung_and_remembers_it():
    asha = Asha(steps=30, halving=3)  # rungs 10 and 30, as the Optuna backend's
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for trial in (a, b):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, a, {STEP: 5, "val_ppl": 90.0}) == asha.CONTINUE  # before the rung
    assert asha.on_trial_result(None, a, {STEP: 10, "val_ppl": 80.0}) == asha.CONTINUE  # first at the rung
    assert asha.on_trial_result(None, b, {STEP: 10, "val_ppl": 120.0}) == asha.STOP
    asha.on_trial_result(None, a, {STEP: 30, "val_ppl": 70.0, "complete": True})  # Tune's STOP at max_t
    assert asha.stopped == {"b": 10}


def test_asha_without_halving_never_stops_a_trial():
    asha = Asha(steps=30, halving=1)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    for trial in (a, b):
        asha.on_trial_add(None, trial)
    asha.on_trial_result(None, a, {STEP: 10, "val_ppl": 80.0})
    assert asha.on_trial_result(None, b, {STEP: 10, "val_ppl": 120.0}) == asha.CONTINUE
    assert asha.stopped == {}


def test_bad_worker_and_backend_flags_are_one_line_errors(tiny_model_dir, text_file, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    common = search_argv(tiny_model_dir, text_file, tmp_path / "r", space=space)
    for extra, match in (
        (["--backend", "ray", "--workers", "0"], "at least 1"),
        (["--address", "auto"], "--backend ray"),
        (["--workers", "2"], "--backend ray"),
    ):
        assert main(common + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0]
    with pytest.raises(UserError, match="cannot reach a Ray cluster"):
        ray_backend.start_ray("127.0.0.1:1", 1, 1)  # nothing listens on port 1
    with pytest.raises(UserError, match="HOST:PORT"):
        ray_backend.start_ray("nowhere", 1, 1)
    with pytest.raises(UserError, match="at least 1"):
        SearchConfig(
            "4x", model=str(tiny_model_dir), data=str(text_file), space=str(space), backend="ray", cpus_per_trial=0
        )


@pytest.mark.slow
def test_two_workers_search_meets_the_budget_writes_the_run_folder_and_resumes(
    tiny_model_dir, text_file, tmp_path, capsys, monkeypatch
):
    import ray

    starts, real_init = [], ray.init
    monkeypatch.setattr(ray, "init", lambda *a, **k: starts.append(k) or real_init(*a, **k))
    monkeypatch.setattr(profile_module, "build_site", None)  # the driver measures no option: the workers do
    (tmp_path / "space.yaml").write_text(SPACE)
    run = tmp_path / "run"
    argv = search_argv(
        tiny_model_dir,
        text_file,
        run,
        space=tmp_path / "space.yaml",
        trials=4,
        finetune_steps=10,
        sampler="random",
        backend="ray",
        workers=2,
    )
    assert main(argv) == 0
    assert len(starts) == 1 and not ray.is_initialized()  # one Ray for the profile and the trials, stopped
    profiled = pd.read_csv(run / "profile.csv")  # measured on the workers, written by the driver
    assert len(profiled) >= 2 and not profiled.duplicated(["site", "knobs"]).any()
    for name in ("study.db", "run.json", "trials.csv", "front.csv"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["backend"] == "ray" and info["workers"] == 2 and "ray" in info["versions"]
    trials = pd.read_csv(run / "trials.csv")
    assert len(trials) == 4 and set(trials["state"]) <= {"COMPLETE", "PRUNED", "FAIL"}
    trained = trials[trials["steps"].notna()]
    assert len(trained) == 4 and (trained["stored_bytes"] <= info["max_bytes"]).all(), "trained over the budget"
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) >= 1 and (complete["steps"] == 10).all() and (complete["ratio"] >= 4).all()
    assert (trials.loc[trials["state"] == "PRUNED", "steps"] < 10).all()
    front = pd.read_csv(run / "front.csv")
    assert len(front) >= 1 and set(front["number"]) <= set(complete["number"])
    assert not list(run.parent.glob("ray_results")) and (run / "ray").is_dir()  # Ray wrote inside the run folder
    capsys.readouterr()
    assert main(["front", str(run), "--format", "csv"]) == 0
    assert set(pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))["number"]) == set(front["number"])
    assert main(argv[: argv.index("--trials") + 1] + ["5"] + argv[argv.index("--trials") + 2 :]) == 0  # resume: +1
    again = pd.read_csv(run / "trials.csv")
    assert len(again) == 5 and again.iloc[:4]["state"].tolist() == trials["state"].tolist()
