"""Resuming a search: the run folder's settings win, contradictions are refused, the hint is complete."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import time

import optuna
import pytest

from autoshrink.cli import main
from autoshrink.errors import UserError
from autoshrink.search import owner
from autoshrink.search import study as study_db
from autoshrink.search.config import RECORDED, SearchConfig
from autoshrink.search.study import REPAIRED, load_study
from conftest import search_argv

SPACE = """
roles:
  embedding: &vocab
    lowrank: {rank: {low: 2, high: 8}}
  softmax: *vocab
  recurrent:
    lowrank: {rank: {low: 2, high: 8}}
"""


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model_dir, text_file):
    """A finished 1-trial search with every recorded setting away from its default; its output."""
    folder = tmp_path_factory.mktemp("resume")
    space = folder / "space.yaml"
    space.write_text(SPACE)
    run = folder / "run"
    argv = search_argv(
        tiny_model_dir, text_file, run, space=space, trials=1, finetune_steps=3, sampler="random", seed=5
    )
    out = io.StringIO()  # a module fixture cannot use capsys
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    return run, out.getvalue()


def test_a_resume_without_flags_takes_the_recorded_settings(first_run, capsys):
    run, _ = first_run
    before = json.loads((run / "run.json").read_text())
    assert main(["search", "--budget", "4x", "--run-dir", str(run), "--trials", "2"]) == 0
    after = json.loads((run / "run.json").read_text())
    for key in ("model", "data_path", "space", "finetune_steps", "sampler", "seed", "distill", "dense_val_ppl"):
        assert after[key] == before[key], key
    trials = [t for t in load_study(run).get_trials() if not t.user_attrs.get(REPAIRED)]
    assert len(trials) == 2
    # the recorded fine-tuning (3 steps; fewer if stopped early as weak), not the default 80
    assert all(1 <= t.user_attrs.get("steps", 0) <= 3 for t in trials)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--model", "kjv-lstm-tiny"], "--model"),
        (["--finetune-steps", "80"], "--finetune-steps"),
        (["--distill"], "--distill"),
        (["--sampler", "tpe"], "--sampler"),
        (["--seed", "0"], "--seed"),  # the default, given explicitly, still contradicts the run
    ],
)
def test_a_flag_that_contradicts_the_run_is_refused_with_one_line(first_run, flags, named, capsys):
    run, _ = first_run
    before = (run / "run.json").read_bytes()
    assert main(["search", "--budget", "4x", "--run-dir", str(run), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "new --run-dir" in err[0], err
    assert (run / "run.json").read_bytes() == before  # nothing rewritten


def test_another_budget_is_refused_and_a_same_budget_spelt_otherwise_is_not():
    recorded = {"budget": "4x", "model": "kjv-lstm-tiny"}
    with pytest.raises(UserError, match="--budget 5x contradicts .* --budget 4x"):
        SearchConfig("5x").resolved(recorded, "R")
    assert SearchConfig(" 4.0x").resolved(recorded, "R").model == "kjv-lstm-tiny"


def test_a_new_run_takes_the_defaults_and_a_path_matches_its_absolute_form(tmp_path, monkeypatch):
    config = SearchConfig("4x").resolved(None)
    assert {name: getattr(config, name) for name in RECORDED} == RECORDED
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("a b c\n")
    recorded = {"data": str(tmp_path / "corpus.txt")}
    assert SearchConfig("4x", data="corpus.txt").resolved(recorded).data == "corpus.txt"


def test_the_printed_hint_is_a_complete_command(first_run, tiny_model_dir, text_file):
    run, out = first_run
    hint = next(line for line in out.splitlines() if line.startswith("resume or extend"))
    argv = shlex.split(hint.split(": ", 1)[1])
    assert argv[:2] == ["autoshrink", "search"]
    for flag, value in (
        ("--model", str(tiny_model_dir)),
        ("--data", str(text_file)),
        ("--finetune-steps", "3"),
        ("--sampler", "random"),
        ("--seed", "5"),
        ("--run-dir", str(run)),
        ("--budget", "4x"),
    ):
        assert argv[argv.index(flag) + 1] == value, flag
    assert "--space" in argv
    assert "--distill" not in argv and "--backend" not in argv  # defaults are left out


# --- trials a dead search left RUNNING ------------------------------------------------------
def _dead_owner() -> dict:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return {**owner.new_owner(), "pid": proc.pid}


def test_a_trial_whose_owner_is_gone_is_failed_and_retried_at_once(tmp_path):
    study = study_db.open_study(tmp_path, "random", 0)
    lost = study.ask()
    lost.suggest_float("x", 0, 1)
    study_db.claim(lost, _dead_owner())
    alive = study.ask()  # a search of this process that is still running: left alone
    me = owner.new_owner()
    study_db.claim(alive, me)
    with owner.active(me):
        lines = study_db.fail_orphans(study)
    assert len(lines) == 1 and f"trial #{lost.number} was left RUNNING by process" in lines[0]
    assert "retried now" in lines[0]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[lost.number] == "FAIL" and states[alive.number] == "RUNNING"
    retry = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(retry) == 1 and retry[0].params == study.trials[lost.number].params


def test_owner_liveness():
    me = owner.new_owner()
    assert owner.gone(me)  # this process, but that search is not running
    with owner.active(me):
        assert not owner.gone(me)
    assert owner.gone(_dead_owner())
    parent = {**me, "pid": os.getppid(), "started": None}
    assert not owner.gone(parent)  # a running process
    if me["started"] is not None:  # process start times are readable here (/proc): a reused pid is told apart
        assert owner.gone({**parent, "started": -1})
    assert not owner.gone({**me, "host": "another-host"}) and not owner.gone(None)  # cannot tell: the heartbeat decides


@pytest.mark.slow  # a real search process, killed mid-trial (~30 s on a busy machine)
def test_a_killed_search_is_resumed_with_its_trial_failed_and_retried(tiny_model_dir, text_file, tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(SPACE)
    run = tmp_path / "run"
    argv = search_argv(
        tiny_model_dir,
        text_file,
        run,
        space=tmp_path / "space.yaml",
        trials=1,
        finetune_steps=60,
        sampler="random",
        warm_start=False,
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "autoshrink", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    try:
        while time.time() < deadline and not _running_trials(run):
            time.sleep(0.2)
    finally:
        proc.kill()
        proc.wait()
    assert _running_trials(run), "the search never started its trial"
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "trial #0 was left RUNNING by process" in err and "retried now" in err
    trials = load_study(run).get_trials()
    assert trials[0].state.name == "FAIL" and trials[1].system_attrs["failed_trial"] == 0
    assert trials[1].state.name == "COMPLETE" and len(trials) == 2


def _running_trials(run) -> list:
    if not (run / "study.db").exists():
        return []
    try:
        trials = load_study(run).get_trials(states=(optuna.trial.TrialState.RUNNING,))
    except (UserError, KeyError):
        return []
    return [t for t in trials if study_db.OWNER in t.system_attrs]


def test_a_space_file_edited_since_the_run_began_is_refused(tiny_model_dir, text_file, tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    run = tmp_path / "run"
    argv = search_argv(tiny_model_dir, text_file, run, space=space, trials=1, finetune_steps=0, sampler="random")
    assert main(argv) == 0
    space.write_text(SPACE + "\n# a comment changes nothing\n")
    assert main(argv + ["--trials", "1"]) == 0
    space.write_text(SPACE.replace("high: 8", "high: 6"))  # other ranks: other trials
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "allows other choices" in err[0] and "new --run-dir" in err[0]
