"""bench/correlation: the search's signals against test perplexity after final training, resumable."""

from __future__ import annotations

import optuna
import pytest

from autoshrink.bench import correlation
from autoshrink.search.study import load_study


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


def test_each_plan_gets_its_proxy_trial_and_test_figures_and_a_rerun_reuses_them(run, monkeypatch):
    configs = []
    real = correlation.train_trial
    monkeypatch.setattr(correlation, "train_trial", lambda run_dir, c, **k: configs.append(c) or real(run_dir, c, **k))
    rows = correlation.measure(run.run_dir, plans=3, steps=2, log=lambda line: None)
    assert 2 <= len(rows) <= 3
    for r in rows:
        assert r["proxy_ppl"] > 0 and r["trial_ppl"] > 0 and r["test_ppl"] > 0 and r["start"] == "fresh"
    # equal final training: no plan starts from its trial's kept weights (front trials keep them)
    assert len(configs) == len(rows) and not any(c.trial_weights for c in configs)
    fake = [
        dict(rows[0], trial=i, proxy_ppl=p, trial_ppl=q, test_ppl=t)
        for i, (p, q, t) in enumerate([(50.0, 40.0, 30.0), (60.0, 35.0, 31.0), (70.0, 45.0, 32.0)])
    ]
    text = correlation.markdown(fake, run.run_dir, "cmd")
    assert "proxy +1.00, trial +0.50 (over 3 plans; fewer than the 8" in text
    monkeypatch.setattr(correlation, "train_trial", lambda *a, **k: pytest.fail("a measured plan was trained again"))
    assert correlation.measure(run.run_dir, plans=3, steps=2, log=lambda line: None) == rows
    # report only: the measured plans, and no training for the rest
    assert correlation.measure(run.run_dir, plans=10, steps=2, log=lambda line: None, measured_only=True) == rows


def test_plans_are_spread_over_the_trials_perplexities():
    study = optuna.create_study(directions=["minimize", "minimize"])
    for ppl in range(10, 30):
        study.add_trial(
            optuna.trial.create_trial(
                values=[float(ppl), 1.0], user_attrs={"feasible": True, "val_ppl": float(ppl), "stored_bytes": 1}
            )
        )
    picked = [t.user_attrs["val_ppl"] for t in correlation.chosen_trials(study, 5)]
    assert picked[0] == 10 and picked[-1] == 29 and len(picked) == 5


def test_spearman_is_a_rank_correlation():
    assert correlation.spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert correlation.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def test_several_runs_pool_their_distinct_plans_and_the_table_names_each_run(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run.run_dir, copy, ignore=shutil.ignore_patterns("correlation"))
    alone = correlation.pooled_trials([run.run_dir], 10)
    pooled = correlation.pooled_trials([run.run_dir, copy], 10)
    # the copy holds the same plans: each is taken once, from the first run
    assert [t.number for _, t in pooled] == [t.number for _, t in alone]
    assert {r for r, _ in pooled} == {run.run_dir}
    # a plan only the second run holds is taken from it
    study = load_study(copy)
    study.add_trial(
        optuna.trial.create_trial(
            values=[1.0, 1.0],
            user_attrs={"feasible": True, "val_ppl": 1.0, "stored_bytes": 1, "plan": {"x": {"method": "quant"}}},
        )
    )
    both = correlation.pooled_trials([run.run_dir, copy], 10)
    assert [(r, t.user_attrs["val_ppl"]) for r, t in both if r == copy] == [(copy, 1.0)]
    assert len(both) == len(alone) + 1
    rows = [
        dict(
            run=str(d),
            trial=i,
            stored_bytes=1,
            proxy_ppl=1.0 + i,
            trial_ppl=2.0 + i,
            test_ppl=3.0 + i,
            steps=2,
            commit="c",
        )
        for i, d in enumerate([run.run_dir, copy, copy])
    ]
    text = correlation.markdown(rows, [run.run_dir, copy], "cmd")
    assert "| run | trial |" in text and f"| {copy.name} | 1 |" in text and f"| {run.run_dir.name} | 0 |" in text


def test_runs_of_different_budgets_are_refused(run, tmp_path, capsys):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run.run_dir, other, ignore=shutil.ignore_patterns("correlation"))
    info = json.loads((other / "run.json").read_text())
    info["max_bytes"] = info["max_bytes"] + 1
    (other / "run.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit) as e:
        correlation.main([str(run.run_dir), str(other)])
    assert e.value.code == 2 and "one budget" in capsys.readouterr().err


def test_a_plan_measured_from_kept_weights_is_set_aside_and_measured_again(run, monkeypatch):
    import json

    rows = correlation.measure(run.run_dir, plans=3, steps=2, log=lambda line: None)
    work = run.run_dir / "correlation"
    first = rows[0]["trial"]
    old = {k: v for k, v in rows[0].items() if k != "start"}
    (work / f"{first}.json").write_text(json.dumps(old))
    trained = []
    real = correlation.train_trial
    monkeypatch.setattr(
        correlation, "train_trial", lambda run_dir, c, **k: trained.append(c.trial) or real(run_dir, c, **k)
    )
    again = correlation.measure(run.run_dir, plans=3, steps=2, log=lambda line: None)
    assert trained == [str(first)]
    assert (work / f"{first}.kept-weights.json").is_file() and (work / f"final-{first}.kept-weights").is_dir()
    assert next(r for r in again if r["trial"] == first)["start"] == "fresh"


def test_bad_folders_and_plans_are_one_line_and_exit_2(run, tmp_path, capsys):
    import json
    import shutil

    nostudy = tmp_path / "nostudy"
    nostudy.mkdir()
    shutil.copy(run.run_dir / "run.json", nostudy / "run.json")
    profile_only = tmp_path / "profile-only"
    profile_only.mkdir()
    info = json.loads((run.run_dir / "run.json").read_text())
    (profile_only / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "finetune_steps"}))
    for argv, message in (
        ([str(run.run_dir), "--plans", "1"], "--plans must be at least 2"),
        ([str(nostudy)], "study"),
        ([str(profile_only)], "no trials"),
    ):
        with pytest.raises(SystemExit) as e:
            correlation.main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, argv


def test_an_unfinished_training_begun_from_kept_weights_is_set_aside_and_report_only_moves_nothing(run, tmp_path):
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run.run_dir, copy, ignore=shutil.ignore_patterns("correlation"))
    number = correlation.pooled_trials([copy], 3)[0][1].number
    begun = copy / "correlation" / f"final-{number}" / "checkpoint"
    begun.mkdir(parents=True)
    (begun / "state.json").write_text(json.dumps({"trial": number, "start": "trial weights"}))
    assert correlation.measure(copy, plans=3, steps=2, log=lambda line: None, measured_only=True) == []
    assert begun.is_dir()  # report only: nothing set aside, nothing trained
    rows = correlation.measure(copy, plans=3, steps=2, log=lambda line: None)
    assert (copy / "correlation" / f"final-{number}.kept-weights" / "checkpoint" / "state.json").is_file()
    assert all(r["start"] == "fresh" for r in rows)
