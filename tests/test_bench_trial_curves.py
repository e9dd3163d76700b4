"""bench/trial_curves: each trial's curve, origin and reported value, read from a run's study."""

from __future__ import annotations


from autoshrink.bench import trial_curves
from autoshrink.search.study import origin_of


def test_every_trial_gets_its_curve_origin_and_value_and_the_best_completed_one_is_named(tiny_run, tmp_path):
    run = tiny_run.run_dir
    rows, info = trial_curves.run_rows(str(run))
    trials = {t.number: t for t in tiny_run.study.get_trials()}
    assert [r["number"] for r in rows] == sorted(trials)
    assert info["trial_lr"] > 0  # the trials' learning rate is recorded by the search
    for r in rows:
        t = trials[r["number"]]
        assert r["origin"] == origin_of(t) and r["state"] == t.state.name
        assert r["curve"] == {int(k): v for k, v in t.user_attrs.get("curve", {}).items()}
        assert 0 not in r["curve"]  # trials compare trained states only
    out = tmp_path / "curves.md"
    assert trial_curves.main([f"{run}=my label", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## my label" in text and f"trials' lr {info['trial_lr']}" in text
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = min(done, key=lambda r: r["val_ppl"])
    assert f"Best completed trial: {best['number']} ({best['origin']}" in text
