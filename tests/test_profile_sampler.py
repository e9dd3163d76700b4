"""The profile-guided sampler: knapsack plans over learned corrections of the profile's losses."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd

from autoshrink.allocate.knapsack import Option
from autoshrink.search import study as study_db
from autoshrink.search.profile_sampler import COEFFS, PARAMS, ProfileGuidedSampler
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
    centre, radius = sampler._center(study)
    assert np.allclose(centre, 0) and radius == 1.0
    for coeffs, ppl in (([0.5, -0.5], 40.0), ([-3.0, 3.0], 30.0)):
        study.add_trial(
            optuna.trial.create_trial(
                values=[ppl, 100.0], user_attrs={"feasible": True, "val_ppl": ppl}, system_attrs={COEFFS: coeffs}
            )
        )
    centre, radius = sampler._center(study)
    assert list(centre) == [-3.0, 3.0] and radius < 1.0
    # Corrected losses: a's option now costs 1 * e^-3 and b's 0.1 * e^3: the knapsack takes a's.
    assert sampler._plan_params(centre, 1.0) == {"a": "a-small", "b": None} or sampler._plan_params(centre, 1.0) == {
        "a": "a-small"
    }
    assert sampler._plan_params(np.zeros(2), 1.0) == {"b": "b-small"}  # the plain profile's choice
