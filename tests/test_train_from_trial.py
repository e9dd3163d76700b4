"""`autoshrink train` starts from the fine-tuned weights the search kept for front trials."""

from __future__ import annotations

import json
import shutil

import pytest

from autoshrink.final.config import TrainConfig
from autoshrink.final.train import train_trial
from autoshrink.search import run_folder
from autoshrink.search.study import load_study


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def _kept(run_dir) -> set[int]:
    return {int(p.name) for p in (run_dir / "trials").iterdir()} if (run_dir / "trials").is_dir() else set()


def test_front_trials_keep_their_weights_and_only_they(run):
    assert _kept(run.run_dir) == set(run.front["number"]) and _kept(run.run_dir)
    stray = run.run_dir / "trials" / "999"  # a trial that has left the front
    stray.mkdir()
    (stray / "model.safetensors").write_bytes(b"x")
    run_folder.write(run.run_dir, load_study(run.run_dir))
    assert _kept(run.run_dir) == set(run.front["number"])


def test_train_starts_from_the_trial_and_ends_no_worse(run, tmp_path):
    best = int(run.front.sort_values("val_ppl").iloc[0]["number"])
    trial_ppl = load_study(run.run_dir).trials[best].user_attrs["val_ppl"]
    lines = []
    final = train_trial(run.run_dir, TrainConfig(steps=3, evals=3, out=str(tmp_path / "final")), log=lines.append)
    assert any(f"trial {best}: starting from its fine-tuned weights" in line for line in lines), lines
    # The tiny corpus's valid split is shorter than the search's 12,000-token slice: the same tokens.
    assert final.metrics["val_ppl"] <= trial_ppl * (1 + 1e-4)
    assert json.loads((tmp_path / "final" / "metrics.json").read_text())["history"][0]["step"] == 0


def test_without_kept_weights_train_says_it_starts_from_the_dense_model(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy, ignore=shutil.ignore_patterns("trials"))
    lines = []
    train_trial(copy, TrainConfig(steps=2, evals=1), log=lines.append)
    assert any("starting from the dense model" in line for line in lines), lines


def test_no_trial_weights_compresses_a_front_trial_afresh(run, tmp_path, capsys):
    from autoshrink.cli import main

    best = int(run.front.sort_values("val_ppl").iloc[0]["number"])
    assert run_folder.kept_weights(run.run_dir, best) is not None
    lines = []
    c = TrainConfig(trial=str(best), steps=2, evals=1, out=str(tmp_path / "a"), trial_weights=False)
    train_trial(run.run_dir, c, log=lines.append)
    assert any(f"trial {best}: starting from the dense model" in line for line in lines), lines
    args = ["train", str(run.run_dir), "--trial", str(best), "--steps", "2", "--no-trial-weights"]
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "starting from the dense model" in captured.out + captured.err


def test_a_fresh_compression_is_data_aware_as_the_search_s_and_a_kept_start_skips_calibration(
    run, tmp_path, monkeypatch
):
    """Without kept weights the plan is compressed afresh with the run's calibration statistics
    (plain only under --calibration-tokens 0); with kept weights nothing is calibrated."""
    from autoshrink.final import train as final_train

    seen = []
    real = final_train.compress
    monkeypatch.setattr(final_train, "compress", lambda *a, **kw: seen.append(kw.get("stats")) or real(*a, **kw))
    number = min(_kept(run.run_dir))  # a trial whose weights the search kept
    copy = tmp_path / "run"
    shutil.copytree(run.run_dir, copy)
    shutil.rmtree(copy / "trials", ignore_errors=True)  # no kept weights: a fresh compression
    train_trial(copy, TrainConfig(trial=str(number), steps=2, evals=1, out=str(tmp_path / "fresh")))
    assert seen[-1] is not None and len(seen[-1]) > 0
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "calibration_tokens": 0}))
    train_trial(copy, TrainConfig(trial=str(number), steps=2, evals=1, out=str(tmp_path / "plain")))
    assert seen[-1] is None
    train_trial(run.run_dir, TrainConfig(trial=str(number), steps=2, evals=1, out=str(tmp_path / "kept")))
    assert seen[-1] is None


def test_the_learning_rate_and_schedule_reach_the_training_loop(run, tmp_path, monkeypatch):
    from autoshrink.errors import UserError
    from autoshrink.final import train as final_train

    seen = []
    real = final_train.train_lm
    monkeypatch.setattr(
        final_train, "train_lm", lambda model, tr, va, cfg, **kw: seen.append(cfg) or real(model, tr, va, cfg, **kw)
    )
    number = min(_kept(run.run_dir))
    config = TrainConfig(trial=str(number), steps=2, evals=1, lr=3e-4, schedule="plateau", out=str(tmp_path / "lr"))
    train_trial(run.run_dir, config)
    assert (seen[-1].lr, seen[-1].schedule) == (3e-4, "plateau")
    with pytest.raises(UserError, match="--lr"):
        TrainConfig(lr=0)
    with pytest.raises(UserError):
        TrainConfig(schedule="linear")
