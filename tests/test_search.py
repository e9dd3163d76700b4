"""The search controller on a tiny pretrained model: budgets met, run folder, resume, failures."""

from __future__ import annotations

import time

import optuna
import pandas as pd
import pytest
import torch

from autoshrink.search import study as study_db
from autoshrink.plan.repair import repair
from autoshrink.search.budget import check_feasible, parse_budget
from autoshrink.search.space import smallest_plan
from autoshrink.cli import main
from autoshrink.errors import UserError
from autoshrink.models import discover_sites
from autoshrink.models.presets import PRESETS
from autoshrink.models.training import DivergedError
from autoshrink.plan import dense_bytes, plan_stored_bytes
from autoshrink.search import optuna_backend
from autoshrink.search.config import SearchConfig
from autoshrink.search.controller import search
from autoshrink.search.space import load_space, parse_space, sample_plan
from conftest import search_argv

SPACE = """
roles:
  embedding: &vocab
    lowrank: {rank: {low: 2, high: 8}, bits: [8, 32]}
    quant: {bits: [2, 4]}
  softmax: *vocab
  recurrent:
    lowrank: {rank: {low: 2, high: 8}}
    prune: {density: {low: 0.1, high: 0.5}}
    quant: {bits: [4, 8]}
"""


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def _search(tiny_model_dir, text_file, space_file, run_dir, log=lambda line: None, **kw):
    args = dict(
        budget="4x",
        model=str(tiny_model_dir),
        data=str(text_file),
        space=str(space_file),
        trials=3,
        finetune_steps=4,
        run_dir=run_dir,
        sampler="random",
    )
    args.update(kw)
    return search(SearchConfig(**args), log=log)


def test_tiny_search_meets_the_budget_and_writes_the_run_folder(tiny_model_dir, text_file, space_file, tmp_path):
    result = _search(tiny_model_dir, text_file, space_file, tmp_path / "run")
    for name in ("study.db", "run.json", "trials.csv", "front.csv"):
        assert (result.run_dir / name).is_file(), name
    trials = pd.read_csv(result.run_dir / "trials.csv")
    assert {"number", "state", "stored_bytes", "ratio", "latency_ms", "val_ppl", "seconds", "plan"} <= set(
        trials.columns
    )
    assert len(trials) == 3
    limit = pd.read_json(result.run_dir / "run.json", typ="series")["max_bytes"]
    trained = trials[trials["state"].isin(["COMPLETE", "PRUNED"]) & trials["steps"].notna()]
    assert (trained["stored_bytes"] <= limit).all(), "a trial trained a plan over the budget"
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) >= 1 and (complete["ratio"] >= 4).all()
    front = pd.read_csv(result.run_dir / "front.csv")
    assert set(front["number"]) <= set(complete["number"]) and len(front) >= 1


def test_rerunning_resumes_and_trials_count_across_resumes(tiny_model_dir, text_file, space_file, tmp_path):
    run = tmp_path / "run"
    first = _search(tiny_model_dir, text_file, space_file, run, trials=2)
    kept = [t.number for t in first.study.get_trials() if not t.user_attrs.get(study_db.REPAIRED)]
    assert len(kept) == 2 and study_db.counted_trials(first.study) == 2
    again = _search(tiny_model_dir, text_file, space_file, run, trials=3)
    numbers = [t.number for t in again.study.get_trials() if not t.user_attrs.get(study_db.REPAIRED)]
    assert numbers[:2] == kept and len(numbers) == 3  # two kept, one added
    same = _search(tiny_model_dir, text_file, space_file, run, trials=3)
    assert len(same.study.get_trials()) == len(again.study.get_trials())  # nothing left to do


def test_a_crashed_trial_is_failed_and_retried(tiny_model_dir, text_file, space_file, tmp_path, monkeypatch):
    monkeypatch.setattr(study_db, "HEARTBEAT_S", 1)
    run = tmp_path / "run"
    run.mkdir()
    study = study_db.open_study(run, "random", 0)
    crashed = study.ask()  # a trial whose process died: RUNNING, heartbeat going stale
    study._storage.record_heartbeat(crashed._trial_id)
    time.sleep(2.5)
    result = _search(tiny_model_dir, text_file, space_file, run, trials=2)
    states = {t.number: t.state.name for t in result.study.get_trials()}
    assert states[0] == "FAIL"
    retries = [t for t in result.study.get_trials() if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state.is_finished()
    assert study_db.counted_trials(result.study) == 2


def test_a_diverging_trial_fails_with_its_reason_and_the_search_goes_on(
    tiny_model_dir, text_file, space_file, tmp_path, monkeypatch
):
    real = optuna_backend.run_trial
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise DivergedError("loss became nan at step 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna_backend, "run_trial", flaky)
    result = _search(tiny_model_dir, text_file, space_file, tmp_path / "run", trials=2)
    trials = [t for t in result.study.get_trials() if not t.user_attrs.get(study_db.REPAIRED)]
    assert trials[0].state.name == "FAIL" and "nan" in trials[0].user_attrs["note"]
    assert trials[1].state.name in ("COMPLETE", "PRUNED")


def _peer(study, nbytes: int, curve: dict, state=optuna.trial.TrialState.COMPLETE) -> None:
    values = [list(curve.values())[-1], float(nbytes)] if state == optuna.trial.TrialState.COMPLETE else None
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            values=values,
            user_attrs={"feasible": True, "stored_bytes": nbytes, "curve": {str(k): v for k, v in curve.items()}},
        )
    )


def test_halving_keeps_the_best_third_of_no_larger_plans_at_a_rung():
    study = optuna.create_study(directions=["minimize", "minimize"])
    _peer(study, 1000, {27: 60.0, 80: 50.0})
    _peer(study, 900, {27: 70.0}, optuna.trial.TrialState.PRUNED)  # a stopped trial's rung counts too
    rule = study_db.HalvingRule(study, halving=3)
    assert rule(2000)(27, 61.0) is not None  # 3 entries: only the best goes on, and 60 is better
    assert rule(2000)(27, 59.0) is None
    assert rule(950)(27, 65.0) is None  # only the 900-byte plan is no larger, and it is worse
    assert rule(500)(27, 90.0) is None  # no plan is as small: nothing to compare with
    assert rule(2000)(40, 90.0) is None  # nobody was validated at step 40: equal steps only
    for extra in range(4):
        _peer(study, 1000, {27: 80.0 + extra})
    assert rule(2000)(27, 69.0) is None  # 7 entries: the best 2 go on (60, then 69)
    assert rule(2000)(27, 71.0) is not None
    assert study_db.HalvingRule(study, halving=1)(2000)(27, 1e9) is None  # off


def test_repair_always_yields_a_feasible_plan_on_the_reference_model():
    model = PRESETS["kjv-lstm"].build(10_002)
    sites = discover_sites(model)
    space = load_space("search_spaces/default.yaml")
    freqs = 1000.0 / torch.arange(1, 10_003, dtype=torch.float32)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    fallback = smallest_plan(space, sites, freqs)
    switched = 0
    for budget in ("10x", "25x", "50x", "100x"):
        limit = check_feasible(parse_budget(budget), space, sites, dense_bytes(model), freqs)
        for _ in range(12):
            plan = sample_plan(study.ask(), space, sites)
            fixed = repair(plan, sites, limit, freqs, fallback=fallback)
            assert fixed is not None and plan_stored_bytes(sites, fixed, freqs) <= limit
            assert set(fixed) >= set(plan)  # repair compresses more, never less
            switched += sum(fixed[n].method != plan[n].method for n in plan)
            # Without fallbacks a plan may be unrepairable, but is never returned over budget.
            bare = repair(plan, sites, limit, freqs)
            assert bare is None or plan_stored_bytes(sites, bare, freqs) <= limit
    assert switched > 0  # the 100x draws do need method switches


def test_a_budget_no_plan_can_meet_is_refused_at_start(tiny_model_dir, text_file, space_file, tmp_path):
    with pytest.raises(UserError, match="cannot be met"):
        _search(tiny_model_dir, text_file, space_file, tmp_path / "run", budget="10000x")
    assert main(search_argv(tiny_model_dir, text_file, tmp_path / "r2", budget="10000x", space=space_file)) == 2


@pytest.mark.parametrize(
    "text,match",
    [
        ("roles: {recurrent: {magic: {}}}", "unknown method"),
        ("roles: {recurrent: {lowrank: {rank: {low: 9, high: 2}}}}", "bad range"),
        ("roles: {recurrent: {lowrank: {colour: [1]}}}", "no knob"),
        ("roles: {recurrent: {lowrank: {rank: [-1]}}}", "not valid"),
        ("roles: {convolution: {lowrank: {}}}", "unknown role"),
        ("roles: {recurrent: {groupreduce: {}}}", "does not apply"),
        ("roles: [unclosed", "not valid YAML"),
        ("- just a list", "expected a mapping"),
    ],
)
def test_space_validation_is_one_clear_error(tmp_path, text, match, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_space(path)
    assert main(["search", "--budget", "10x", "--model", "kjv-lstm-tiny", "--space", str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_shipped_default_space_loads_and_samples_every_site():
    space = parse_space(__import__("yaml").safe_load(open("search_spaces/default.yaml")))
    sites = discover_sites(PRESETS["kjv-lstm"].build(10_002))
    plan = sample_plan(optuna.create_study().ask(), space, sites)
    assert set(plan) == {s.name for s in sites}


def test_cli_search_prints_the_front_and_the_api_takes_a_torch_module(
    tiny_model_dir, text_file, space_file, tmp_path, capsys
):
    argv = search_argv(
        tiny_model_dir, text_file, tmp_path / "cli", space=space_file, trials=2, finetune_steps=4, sampler="random"
    )
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out or "no feasible completed trial" in out
    import autoshrink

    module = autoshrink.load(str(tiny_model_dir))  # an nn.Module carrying its vocabulary
    config = autoshrink.SearchConfig(
        "4x",
        model=module,
        data=str(text_file),
        space=str(space_file),
        trials=1,
        finetune_steps=2,
        run_dir=tmp_path / "api",
        sampler="random",
    )
    result = autoshrink.api.search(config, log=lambda line: None)
    assert study_db.counted_trials(result.study) == 1


def test_latency_budget_is_measured_and_an_impossible_one_refused(tiny_model_dir, text_file, space_file, tmp_path):
    result = _search(tiny_model_dir, text_file, space_file, tmp_path / "lat", budget="5000ms", trials=2)
    complete = [t for t in result.study.get_trials() if t.state.name == "COMPLETE"]
    assert complete, "a generous latency budget should complete trials"
    for t in complete:
        assert 0 < t.user_attrs["latency_ms"] <= 5000 and t.user_attrs["feasible"]
        assert t.values[1] == pytest.approx(t.user_attrs["latency_ms"])  # latency is the second objective
    assert (tmp_path / "lat" / "latency_cache.json").is_file()
    with pytest.raises(UserError, match="cannot be met"):
        _search(tiny_model_dir, text_file, space_file, tmp_path / "lat2", budget="0.0001ms")


def test_repair_inside_the_space_keeps_every_knob_to_the_space_values():
    """Repair with the space's step never leaves the space (bits 7 or rank 1 where the space
    allows bits {4,6,8,16} and rank >= 4), so a repaired plan can be enqueued as a trial."""
    model = PRESETS["kjv-lstm"].build(10_002)
    sites = discover_sites(model)
    space = load_space("search_spaces/default.yaml")
    freqs = 1000.0 / torch.arange(1, 10_003, dtype=torch.float32)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    fallback = smallest_plan(space, sites, freqs)
    by_name = {s.name: s for s in sites}
    changed = 0
    for budget in ("25x", "100x"):
        limit = check_feasible(parse_budget(budget), space, sites, dense_bytes(model), freqs)
        for _ in range(10):
            plan = sample_plan(study.ask(), space, sites)
            fixed = repair(plan, sites, limit, freqs, fallback=fallback, step=space.shrink)
            assert fixed is not None and plan_stored_bytes(sites, fixed, freqs) <= limit
            changed += fixed != plan
            for name, cfg in fixed.items():
                knobs = space.roles[by_name[name].role][cfg.method]
                for knob_name, knob in knobs.items():
                    value = getattr(cfg, knob_name)
                    if knob.choices is not None:
                        assert value in knob.choices, (name, knob_name, value)
                    else:
                        assert knob.low <= value <= knob.high, (name, knob_name, value)
            # The parameters of the repaired plan draw exactly that plan again.
            again = sample_plan(optuna.trial.FixedTrial(space.params_of(fixed, sites)), space, sites)
            assert again == fixed
    assert changed > 0


def test_an_over_budget_draw_is_trained_as_its_repair_and_not_counted(tiny_model_dir, text_file, tmp_path):
    """The study records the plan that was trained: an over-budget draw is noted and its in-space
    repair queued as its own trial, whose parameters are the trained plan's."""
    space = tmp_path / "space.yaml"
    space.write_text(
        "roles:\n  embedding: &v\n    lowrank: {rank: [2, 16], bits: [8, 32]}\n  softmax: *v\n"
        "  recurrent:\n    lowrank: {rank: [2, 16], bits: [8, 32]}\n"
    )
    result = _search(tiny_model_dir, text_file, space, tmp_path / "run", trials=3, budget="6x", warm_start=False)
    trials = result.study.get_trials()
    repaired = [t for t in trials if t.user_attrs.get("repaired_into_new_trial")]
    trained = [t for t in trials if t.user_attrs.get("steps")]
    assert len(trained) == 3  # --trials counts trained plans, not repaired draws
    assert repaired, "a 6x budget with ranks {2, 16} and fp32 storage forces repairs"
    for t in trained:
        drawn = sample_plan(
            optuna.trial.FixedTrial(t.params),
            load_space(str(space)),
            discover_sites(__import__("autoshrink").load(str(tiny_model_dir))),
        )
        assert {k: v.to_dict() for k, v in drawn.items()} == t.user_attrs["plan"]


def test_mid_ramp_validations_are_neither_recorded_nor_compared(tiny_model_dir, text_file):
    """A pruning plan is denser than stored until its ramp ends (75%): its earlier validations
    must not stop it, nor stand in its curve for other trials to be compared against."""
    from autoshrink.data import load_lm_data
    from autoshrink.search.trial import TrialSettings, run_trial

    model = __import__("autoshrink").load(str(tiny_model_dir))
    data = load_lm_data(str(text_file), vocab=model.vocab)
    asked = []

    def never_stop(step, val):
        asked.append(step)
        return None

    settings = TrialSettings(finetune_steps=8, halving=1, evals=4, eval_tokens=200)
    plan = {"rnn.0.hh": {"method": "prune", "density": 0.3}}
    result = run_trial(model, plan, data, settings, dense_bytes(model), should_stop=never_stop)
    assert asked and min(asked) >= 6  # validations at steps 2 and 4 came before the ramp settled
    assert min(result.curve) >= 6 and set(asked) <= set(result.curve)


def test_with_halving_a_trial_is_judged_at_its_rungs_after_its_ramps_have_ended(tiny_model_dir, text_file):
    """Successive halving: validations at the rungs only (30 steps by 3: steps 10 and 30), the
    pruning ramp over by the first, which is asked about and recorded; a stop carries the curve."""
    from autoshrink.data import load_lm_data
    from autoshrink.search.trial import StopTrial, TrialSettings, run_trial

    model = __import__("autoshrink").load(str(tiny_model_dir))
    data = load_lm_data(str(text_file), vocab=model.vocab)
    asked = []
    settings = TrialSettings(finetune_steps=30, halving=3, eval_tokens=200)
    plan = {"rnn.0.hh": {"method": "prune", "density": 0.3}}
    result = run_trial(model, plan, data, settings, dense_bytes(model), should_stop=lambda s, v: asked.append(s))
    assert asked == [10] and sorted(result.curve) == [10, 30]
    with pytest.raises(StopTrial) as stop:
        run_trial(model, plan, data, settings, dense_bytes(model), should_stop=lambda s, v: "weak")
    assert stop.value.step == 10 and list(stop.value.curve) == [10]


def test_rungs_of_successive_halving():
    from autoshrink.search.trial import MIN_RUNG_STEPS, rungs

    assert rungs(80, 3) == [27, 80]
    assert rungs(270, 3) == [10, 30, 90, 270]
    assert rungs(9, 3) == [9]  # too short to judge before the end
    assert rungs(80, 1, evals=4) == [20, 40, 60, 80]  # off: the curve's evenly spaced validations
    assert rungs(0, 3) == []
    assert min(rungs(1000, 2)) >= MIN_RUNG_STEPS


def test_repair_steps_an_entry_that_stores_more_than_its_dense_site_below_it():
    """compress refuses a config storing more than its dense site; a sampled one is repaired."""
    from autoshrink.methods import config_class
    from autoshrink.plan.repair import below_dense

    model = PRESETS["kjv-lstm-tiny"].build(2_002)
    sites = discover_sites(model)
    site = next(s for s in sites if s.name == "rnn.0.hh")
    big = config_class("lowrank")(rank=min(site.shape))  # full rank at fp32: more than dense
    fixed = below_dense({site.name: big}, sites)
    assert fixed[site.name].rank < big.rank
    fixed[site.name].check_shrinks(site)  # no longer refused
    repaired = repair({site.name: big}, sites, 10**9)  # a generous budget still repairs it
    repaired[site.name].check_shrinks(site)


def test_the_search_ends_with_where_its_time_went(tiny_model_dir, text_file, space_file, tmp_path):
    lines = []
    result = _search(tiny_model_dir, text_file, space_file, tmp_path / "run", log=lines.append, trials=2)
    line = lines[-1]
    assert line.startswith("time: calibration ") and "profile and allocation" in line and "2 trial(s)" in line
    trained = [t for t in result.study.get_trials() if t.state.name == "COMPLETE"]
    assert trained and all(0 < t.user_attrs["build_seconds"] <= t.user_attrs["seconds"] for t in trained)


def test_a_trial_compares_only_trained_states_at_its_rungs(tiny_model_dir, text_file):
    """Equal fidelity: a trial's curve holds its rungs only (no untrained step 0, which a plan with a
    ramp could not have), and it reports the best of them, even when training made the plan worse."""
    from autoshrink.data import load_lm_data
    from autoshrink.models.training import evaluate_perplexity
    from autoshrink.plan import compress
    from autoshrink.search.trial import TrialSettings, run_trial, rungs

    model = __import__("autoshrink").load(str(tiny_model_dir))
    data = load_lm_data(str(text_file), vocab=model.vocab)
    plan = {"rnn.0.hh": {"method": "lowrank", "rank": 4, "init": "plain"}}
    start = evaluate_perplexity(compress(model, plan, freqs=data.vocab.freqs), data.valid, max_tokens=200)
    asked = []
    settings = TrialSettings(finetune_steps=30, halving=3, eval_tokens=200, lr=3.0)
    result = run_trial(model, plan, data, settings, dense_bytes(model), should_stop=lambda s, v: asked.append(s))
    assert sorted(result.curve) == rungs(30, 3) == [10, 30] and asked == [10]
    assert min(result.curve.values()) > start  # the training made it worse ...
    assert result.val_ppl == pytest.approx(min(result.curve.values()))  # ... and the trial reports what it trained
