"""The profile-guided sampler: knapsack plans over learned corrections of the profile's losses."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd

from autoshrink.allocate.knapsack import Option
from autoshrink.search import study as study_db
from autoshrink.search.profile_sampler import COEFFS, FRACTION, FRACTIONS, PARAMS, SMALLEST, ProfileGuidedSampler
from test_search import _search

SPACE = """
roles:
  embedding: &vocab
    lowrank: {rank: {low: 2, high: 8}, bits: [4, 8]}
  softmax: *vocab
  recurrent:
    lowrank: {rank: {low: 2, high: 8}, bits: [4, 8]}
    quant: {bits: [4, 8]}
"""


def test_a_search_with_the_profile_sampler_trains_distinct_knapsack_plans_within_the_budget(
    tiny_model_dir, text_file, tmp_path
):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    result = _search(
        tiny_model_dir,
        text_file,
        space,
        tmp_path / "run",
        trials=6,
        finetune_steps=0,
        sampler="profile",
        warm_start=False,
    )
    trials = result.study.get_trials()
    sampled = [t for t in trials if COEFFS in t.system_attrs]
    assert len(sampled) >= 2, "the trials after the allocated ones are the sampler's"
    for t in sampled:
        assert t.params == t.system_attrs[PARAMS]  # every parameter came from the knapsack plan
        assert not t.user_attrs.get(study_db.REPAIRED)  # within the budget as drawn
    plans = [tuple(sorted(t.params.items())) for t in trials if t.params]
    assert len(plans) == len(set(plans)), "a plan already trained was drawn again"
    limit = pd.read_json(result.run_dir / "run.json", typ="series")["max_bytes"]
    assert all(t.user_attrs["stored_bytes"] <= limit for t in sampled)


def _options():
    # Site a: a cheap option that the profile calls bad; site b: a cheap option it calls good.
    return {
        "a": [Option(None, 100.0, 0.0), Option("a-small", 10.0, 1.0)],
        "b": [Option(None, 100.0, 0.0), Option("b-small", 10.0, 0.1)],
    }


def test_the_neighbourhood_centres_on_the_best_trained_plan_and_shrinks():
    sampler = ProfileGuidedSampler(seed=0)
    sampler.attach(_options(), 110.0, lambda plan: dict(sorted(plan.items())))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    centre, radius = sampler._center(study.get_trials())
    assert np.allclose(centre, 0) and radius == 1.0
    for coeffs, ppl in (([0.5, -0.5], 40.0), ([-3.0, 3.0], 30.0)):
        study.add_trial(
            optuna.trial.create_trial(
                values=[ppl, 100.0], user_attrs={"feasible": True, "val_ppl": ppl}, system_attrs={COEFFS: coeffs}
            )
        )
    centre, radius = sampler._center(study.get_trials())
    assert list(centre) == [-3.0, 3.0] and radius < 1.0
    # Corrected losses: a's option now costs 1 * e^-3 and b's 0.1 * e^3: the knapsack takes a's.
    assert sampler._plan_params(centre, 1.0) == {"a": "a-small", "b": None} or sampler._plan_params(centre, 1.0) == {
        "a": "a-small"
    }
    assert sampler._plan_params(np.zeros(2), 1.0) == {"b": "b-small"}  # the plain profile's choice


def _trained(study, stored_bytes: float, own: bool, feasible: bool = True) -> None:
    attrs = {COEFFS: [0.0, 0.0]} if own else {}
    study.add_trial(
        optuna.trial.create_trial(
            values=[40.0, stored_bytes],
            user_attrs={"feasible": feasible, "val_ppl": 40.0, "stored_bytes": stored_bytes},
            system_attrs=attrs,
        )
    )


def test_every_other_plan_fills_the_widest_gap_of_the_front_over_sizes():
    # 10 bytes outside the sites, 100 for the sites: a trial of 100 stored bytes used 0.9 of the budget.
    sampler = ProfileGuidedSampler(seed=0)
    sampler.attach(_options(), 100.0, lambda plan: dict(sorted(plan.items())), fixed=10.0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    _trained(study, 110.0, own=False)  # the allocation, at the limit
    _trained(study, 100.0, own=False)  # the knapsack at 0.9 of it
    _trained(study, 30.0, own=False, feasible=False)  # an infeasible trial is not on the front
    assert sampler._fraction(study.get_trials()) == SMALLEST  # its first plan: as far below the others as allowed
    _trained(study, 10.0 + 100.0 * SMALLEST, own=True)
    assert sampler._fraction(study.get_trials()) == 1.0  # then one at the limit
    _trained(study, 110.0, own=True)
    gap = sampler._fraction(study.get_trials())  # then the middle of the widest gap, between 0.6 and 0.9
    assert gap in FRACTIONS and abs(gap - 0.75) < 0.03


def test_the_sampler_s_first_plan_is_smaller_than_the_budget_and_records_its_fraction():
    sampler = ProfileGuidedSampler(seed=0)
    sampler.attach(_options(), 110.0, lambda plan: dict(sorted(plan.items())))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    dist = optuna.distributions.CategoricalDistribution(["a-small", "none"])
    trial = study.ask({"a": dist})
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.system_attrs[FRACTION] == SMALLEST
    # At 0.6 of 110 bytes the knapsack cannot keep a site dense (100 bytes): both are compressed.
    assert frozen.system_attrs[PARAMS] == {"a": "a-small", "b": "b-small"}


def test_a_plan_of_this_sampler_still_training_counts_as_a_size_taken():
    sampler = ProfileGuidedSampler(seed=0)
    sampler.attach(_options(), 100.0, lambda plan: dict(sorted(plan.items())), fixed=10.0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    _trained(study, 110.0, own=True)  # this sampler's plan at the limit
    running = study.ask()  # another of its plans, fitted to the smallest size, not finished yet
    study._storage.set_trial_system_attr(running._trial_id, COEFFS, [0.0, 0.0])
    study._storage.set_trial_system_attr(running._trial_id, FRACTION, SMALLEST)
    gap = sampler._fraction(study.get_trials())  # its third plan: between the running one and the limit
    assert abs(gap - 0.8) < 0.03
