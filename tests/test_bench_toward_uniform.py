"""bench/toward_uniform: the allocation's plan moved toward uniform sizes, trained and reported."""

from __future__ import annotations

import pytest

from autoshrink.bench import reference, toward_uniform
from autoshrink.bench.reference import Row
from autoshrink.methods import config_from_dict
from autoshrink.plan import plan_stored_bytes
from autoshrink.plan.apply import parse_plan, plan_to_json
from autoshrink.plan.fit import uniform_plan

ROW = Row("lstm-3x", 3, frozenset({"recurrent"}), "", "LSTM")


def _unequal(bench_setup) -> dict:
    """A plan within the row's limit whose first LSTM matrix is much smaller than the others."""
    freqs = bench_setup.lm.vocab.freqs
    uniform = uniform_plan(
        config_from_dict({"method": "lowrank", "bits": 8}),
        bench_setup.sites,
        bench_setup.max_bytes(ROW),
        freqs,
        bench_setup.model_file,
        ROW.roles,
    )
    first = sorted(uniform)[0]
    return plan_to_json({**uniform, first: uniform[first].replace(rank=1)}), plan_to_json(uniform)


def test_weight_0_is_the_plan_itself_weight_1_the_uniform_sizes_all_within_the_limit(bench_setup):
    best, uniform = _unequal(bench_setup)
    plans = toward_uniform.plans_toward_uniform(bench_setup, ROW, best, [0.0, 0.5, 1.0])
    assert plans[0.0] == best
    assert plans[1.0] == uniform
    first = sorted(best)[0]
    assert best[first]["rank"] < plans[0.5][first]["rank"] <= uniform[first]["rank"]
    for plan in plans.values():
        stored = plan_stored_bytes(
            bench_setup.sites, parse_plan(plan), bench_setup.lm.vocab.freqs, bench_setup.model_file
        )
        assert stored <= bench_setup.max_bytes(ROW)


def test_each_plan_trains_once_and_the_report_names_the_lowest_test_perplexity(bench_setup, tmp_path, monkeypatch):
    best, _ = _unequal(bench_setup)
    results = toward_uniform.measure(bench_setup, ROW, best, [0.0, 1.0], work=tmp_path)
    assert [r["weight"] for r in results] == [0.0, 1.0]
    assert len(list((tmp_path / ROW.name).glob("w*/bench.json"))) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a measured plan is read back, not trained again")

    monkeypatch.setattr(reference, "train_entrant", no_training)
    again = toward_uniform.measure(bench_setup, ROW, best, [0.0, 1.0], work=tmp_path)
    assert [r["test_ppl"] for r in again] == [r["test_ppl"] for r in results]
    # Another plan at the same weight is another folder: nothing is read back for a plan it did not train.
    with pytest.raises(AssertionError, match="read back"):
        toward_uniform.measure(bench_setup, ROW, _unequal(bench_setup)[1], [0.0], work=tmp_path)
    lowest = min(results, key=lambda r: r["test_ppl"])
    text = toward_uniform.markdown(ROW.name, results, "cmd", bench_setup.max_bytes(ROW))
    assert f"Lowest test perplexity: weight {lowest['weight']:g} ({lowest['test_ppl']:.2f})" in text
    assert text.count("\n| ") == 3  # the header and one line per weight


def test_a_run_folder_without_an_allocation_is_one_clear_error(tmp_path, capsys):
    assert toward_uniform.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: no allocation.json")


@pytest.mark.parametrize("stop_early", [True, False])
def test_the_converged_tier_stops_at_a_plateau_unless_told_to_train_every_step(bench_setup, monkeypatch, stop_early):
    import dataclasses

    import autoshrink.final.train as final_train

    seen = {}

    class Captured(Exception):
        pass

    def capture(*args, **kwargs):
        seen.update(kwargs["options"])
        raise Captured

    monkeypatch.setattr(final_train, "train_plan", capture)
    converged = dataclasses.replace(bench_setup, tier="converged", stop_early=stop_early)
    with pytest.raises(Captured):
        reference.train_entrant(converged, {}, bench_setup.work / "x", "x", {})
    assert ("patience" in seen) is not stop_early and seen.get("patience") is None


def test_no_early_stop_is_one_clear_error_outside_the_converged_tier(tmp_path, capsys):
    (tmp_path / "allocation.json").write_text('{"best": {"plan": {}}}')
    assert toward_uniform.main([str(tmp_path), "--no-early-stop"]) == 2
    assert "--no-early-stop is for the converged tier" in capsys.readouterr().err


def test_an_allocation_json_that_is_not_one_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "allocation.json").write_text("{not json")
    assert toward_uniform.main([str(tmp_path)]) == 2
    assert "is not an allocation.json" in capsys.readouterr().err


def test_a_training_seed_seeds_the_training_only_and_keeps_its_results_apart(bench_setup, monkeypatch):
    import dataclasses

    import autoshrink.final.train as final_train

    seen = {}

    class Captured(Exception):
        pass

    def capture(*args, **kwargs):
        seen["seed"] = kwargs["seed"]
        raise Captured

    monkeypatch.setattr(final_train, "train_plan", capture)
    reseeded = dataclasses.replace(bench_setup, train_seed=5)
    assert reseeded.seed == bench_setup.seed == 0  # the same dense model
    with pytest.raises(Captured):
        reference.train_entrant(reseeded, {}, bench_setup.work / "y", "y", {})
    assert seen["seed"] == 5
    plan = {"rnn.0.ih": {"method": "lowrank", "rank": 2}}
    assert toward_uniform.plan_folder(0.5, plan, 5) != toward_uniform.plan_folder(0.5, plan, 0)
