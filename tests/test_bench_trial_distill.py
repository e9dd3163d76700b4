"""bench/trial_distill: plain against distilled trials at equal time, ranked against a fresh final training."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from autoshrink.bench import trial_distill
from autoshrink.bench.correlation import RunSetup, chosen_trials
from autoshrink.search import run_folder
from autoshrink.search.study import load_study

PLANS = 3


def injected_timing(number: int) -> dict:
    """Made-up seconds per step, different for each plan, so the ratio of totals is not any one plan's."""
    return {
        "plain_s_per_step": [0.10 + 0.01 * number, 0.5, 0.10 + 0.01 * number],  # the 0.5: an outlier the median drops
        "distilled_s_per_step": [0.30 + 0.05 * number] * 3,
        "plain_ppl": [100.0 + number] * 3,
        "distilled_ppl": [90.0 + number] * 3,
        "commit": "test",
    }


@pytest.fixture(scope="module")
def measured(tiny_run, tmp_path_factory):
    """One measurement of the tiny run with injected timings: its trials' step counts and its log."""
    trials, lines = [], []
    real_trial = trial_distill.fresh_trial

    def spy(setup, plan_json, steps, distill):
        trials.append((steps, distill))
        return real_trial(setup, plan_json, steps, distill)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        mp.setattr(trial_distill, "fresh_trial", spy)
        timed = []

        def fake_timing(setup, plan_json, steps, reps):
            timed.append(plan_json)
            return injected_timing(len(timed))

        mp.setattr(trial_distill, "time_trials", fake_timing)
        timings, rows = trial_distill.measure(tiny_run.run_dir, plans=PLANS, steps=2, reps=3, log=lines.append)
    return SimpleNamespace(run_dir=tiny_run.run_dir, timings=timings, rows=rows, trials=trials, log=lines)


def test_the_equal_time_steps_follow_the_measured_ratio_of_totals(measured):
    steps = 6  # the tiny run's finetune_steps
    timings = list(measured.timings.values())
    assert len(timings) == PLANS
    # by hand from injected_timing: medians 0.11 + 0.12 + 0.13 plain (the 0.5 outliers dropped) against
    # 0.35 + 0.40 + 0.45 distilled, a ratio of totals of 0.3, so 6 plain steps take as long as 1.8 distilled ones
    expected = 2
    assert trial_distill.equal_time_steps(steps, timings) == (pytest.approx(0.3), expected)
    assert measured.trials == [(expected, True)] * len(measured.rows)  # only the equal-time trial ran for real
    assert {r["distilled_steps"] for r in measured.rows} == {expected}
    # the plain and equal-steps figures are the timed trials' own
    assert [r["plain_ppl"] for r in measured.rows] == [t["plain_ppl"][0] for t in timings]


def test_equal_time_takes_the_medians():
    timing = {"plain_s_per_step": [0.1, 9.0, 0.1], "distilled_s_per_step": [0.2, 0.2, 0.0]}
    assert trial_distill.equal_time_steps(20, [timing]) == (pytest.approx(0.5), 10)


def test_final_training_starts_fresh_never_from_a_trials_kept_weights(measured):
    chosen = chosen_trials(load_study(measured.run_dir), PLANS)
    assert any(run_folder.kept_weights(measured.run_dir, t.number) for t in chosen)  # there were weights to read
    starts = [line for line in measured.log if "starting from" in line]
    assert len(starts) == len(measured.rows)
    assert all("compressed afresh" in line for line in starts), starts


def test_a_second_run_reads_the_measured_figures_instead_of_training_again(measured, monkeypatch):
    calls = []
    monkeypatch.setattr(trial_distill, "train_plan", lambda *a, **k: calls.append("final"))
    monkeypatch.setattr(trial_distill, "run_trial", lambda *a, **k: calls.append("trial"))
    monkeypatch.setattr(trial_distill, "load_setup", lambda info: calls.append("setup"))
    timings, rows = trial_distill.measure(measured.run_dir, plans=PLANS, steps=2, log=lambda line: None)
    assert calls == []
    assert (timings, rows) == (measured.timings, measured.rows)


def rows_where(plain: list[float], distilled: list[float], test: list[float]) -> list[dict]:
    return [{"plain_ppl": p, "distilled_equal_time_ppl": d, "test_ppl": t} for p, d, t in zip(plain, distilled, test)]


def test_the_verdict_is_generated_from_the_rows():
    test = [float(i) for i in range(10)]
    mixed = [3.0, 0.0, 1.0, 7.0, 2.0, 9.0, 4.0, 6.0, 5.0, 8.0]  # ranks the plans loosely
    distilled_wins = trial_distill.verdict(rows_where(mixed[::-1], test, test))
    plain_wins = trial_distill.verdict(rows_where(test, mixed[::-1], test))
    assert "**distilled trials rank plans better than plain ones" in distilled_wins
    assert "**plain trials rank plans better than distilled ones" in plain_wins
    close = trial_distill.verdict(rows_where(test, [1.0, 0.0, *test[2:]], test))  # one adjacent pair swapped
    assert "**within noise**" in close and "+0.99 distilled (equal time) against +1.00 plain" in close


def test_the_report_shows_every_plan_and_the_verdict(measured):
    text = trial_distill.markdown(measured.timings, measured.rows, measured.run_dir, "cmd")
    for r in measured.rows:
        assert f"| {r['trial']} | {r['stored_bytes']:,} |" in text
    assert text.rstrip().splitlines()[-1] == trial_distill.verdict(measured.rows)


def test_more_target_seeds_train_only_the_missing_ones_and_the_target_is_their_mean(measured, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(measured.run_dir, run_dir)
    seeds = []

    def fake_final(*args, seed, **kwargs):
        seeds.append(seed)
        return SimpleNamespace(metrics={"test_ppl": 1000.0 + seed + kwargs["label"]})

    monkeypatch.setattr(trial_distill, "train_plan", fake_final)
    monkeypatch.setattr(trial_distill, "load_setup", lambda info: RunSetup(info, None, None, None))
    _, rows = trial_distill.measure(run_dir, plans=PLANS, steps=2, target_seeds=3, log=lambda line: None)
    assert sorted(seeds) == sorted([1, 2] * len(rows))  # seed 0 was measured already
    for r, before in zip(rows, measured.rows):
        assert trial_distill.target(r) == pytest.approx((before["test_ppl"] + 2003.0 + 2 * r["trial"]) / 3)
    text = trial_distill.markdown(measured.timings, rows, run_dir, "cmd")
    assert "The target's own noise" in text and "seed 1 +" in text and "seed 2 +" in text
