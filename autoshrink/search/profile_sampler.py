"""A sampler guided by the profile: each plan is the knapsack's answer to per-site losses that
the sampler learns to correct, in the manner of SPDY (Frantar & Alistarh 2022).

The profile (allocate/profile.py) says what each site's options cost alone; the loss of a whole
plan is not their sum (sites interact, and training repairs some damage more than other). So each
site gets a coefficient c (log scale), a trial's plan is the multiple-choice knapsack over the
losses loss x exp(c) within the budget, and the coefficients of a new trial are drawn around those
of the best trained plan so far, in a neighbourhood that shrinks as trials finish (SPDY's
shrinking neighbourhood search). A trial's coefficients are stored with it (system attribute), so
a resumed search goes on from the study alone. Every other plan is fitted to a fraction of the
budget, the one farthest from every plan trained so far, so the front spreads over sizes from the
sampler's first plan on (random fractions left its first plans at the limit, where they add no
hypervolume: results/search-kjv-lstm.md). Parameters a knapsack plan does not set (a resumed run without
a profile, a latency budget) are drawn at random.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from autoshrink.allocate.knapsack import Option, solve

COEFFS = "profile:coefficients"  # system attrs of a trial this sampler planned
PARAMS = "profile:params"
FRACTION = "profile:fraction"  # of the sites' capacity that a plan was fitted to
RADIUS = 1.0  # first neighbourhood: a site's loss may be e times larger or smaller
SHRINK = 0.85  # per trained plan of this sampler
MIN_RADIUS = 0.1
SMALLEST = 0.6  # the smallest fraction of the budget a plan is fitted to (for the front)
FRACTIONS = tuple(np.linspace(SMALLEST, 1.0, 9)[:-1])  # the sizes below the limit it may take
ATTEMPTS = 30


class ProfileGuidedSampler(optuna.samplers.BaseSampler):
    """Knapsack plans over corrected profile losses; `attach` gives it the profile's options."""

    def __init__(self, seed: int | None = None):
        self.rng = np.random.default_rng(seed)
        self.fallback = optuna.samplers.RandomSampler(seed=seed)
        self.options: Mapping[str, Sequence[Option]] | None = None
        self.capacity = 0.0
        self.fixed = 0.0
        self.to_params = None

    def attach(self, options: Mapping[str, Sequence[Option]], capacity: float, to_params, fixed: float = 0.0) -> None:
        """`options`: per site, knapsack options whose config is a MethodConfig (None: dense);
        `capacity`: the bytes the sites may hold; `to_params(plan)`: the plan's Optuna parameters;
        `fixed`: the model's bytes outside the sites (a trial's stored bytes less these, over the
        capacity, is the fraction of the budget it used)."""
        self.options, self.capacity, self.to_params = dict(options), float(capacity), to_params
        self.fixed = float(fixed)

    def reseed_rng(self) -> None:
        self.rng = np.random.default_rng()
        self.fallback.reseed_rng()

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.options is None or "fixed_params" in trial.system_attrs:
            return  # no profile, or an enqueued plan (allocation, warm start, repair)
        trials = study.get_trials(deepcopy=False)  # read once: a storage read per call (SQLite, Ray's store)
        seen = {_key(t.params) for t in trials if t.params}
        center, radius = self._center(trials)
        planned = self._fraction(trials)
        for attempt in range(ATTEMPTS):  # a plan already trained teaches nothing: widen and draw again
            coeffs = center + radius * (1 + attempt / 4) * self.rng.standard_normal(len(center))
            # A small space runs out of new plans at one size: after a third of the attempts, any size.
            fraction = planned if attempt < ATTEMPTS // 3 else self.rng.uniform(SMALLEST, 1.0)
            params = self._plan_params(coeffs, fraction)
            if params is not None and _key(params) not in seen:
                break
        else:
            return  # the knapsack keeps answering with trained plans: this one is drawn at random
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, COEFFS, [float(c) for c in coeffs])
        storage.set_trial_system_attr(trial._trial_id, PARAMS, params)
        storage.set_trial_system_attr(trial._trial_id, FRACTION, float(fraction))

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        planned = trial.system_attrs.get(PARAMS, {})
        if param_name in planned:
            value = planned[param_name]
            try:
                if param_distribution._contains(param_distribution.to_internal_repr(value)):
                    return value
            except (ValueError, TypeError):
                pass
        return self.fallback.sample_independent(study, trial, param_name, param_distribution)

    def _center(self, trials: Sequence[FrozenTrial]) -> tuple[np.ndarray, float]:
        """The coefficients of the best trained plan of this sampler (zeros: the plain profile)
        and the neighbourhood's radius after the plans it has trained."""
        names = list(self.options)
        done = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE
            and COEFFS in t.system_attrs
            and t.user_attrs.get("feasible")
            and len(t.system_attrs[COEFFS]) == len(names)
        ]
        radius = max(MIN_RADIUS, RADIUS * SHRINK ** len(done))
        if not done:
            return np.zeros(len(names)), radius
        best = min(done, key=lambda t: t.user_attrs.get("val_ppl", math.inf))
        return np.array(best.system_attrs[COEFFS], dtype=float), radius

    def _fraction(self, trials: Sequence[FrozenTrial]) -> float:
        """1 for every other plan of this sampler (the plan a user trains is at the limit); for the
        others (its first included) the fraction in FRACTIONS farthest from the sizes of the feasible
        plans trained so far and of this sampler's plans under way: the widest gap of the front."""
        own = [t for t in trials if COEFFS in t.system_attrs]
        if len(own) % 2 == 1:
            return 1.0
        sizes = [
            (t.user_attrs["stored_bytes"] - self.fixed) / max(self.capacity, 1.0)
            for t in trials
            if t.state == TrialState.COMPLETE and t.user_attrs.get("feasible") and "stored_bytes" in t.user_attrs
        ]
        sizes += [t.system_attrs[FRACTION] for t in own if FRACTION in t.system_attrs and not t.state.is_finished()]
        return max(FRACTIONS, key=lambda f: min((abs(f - s) for s in sizes), default=1.0 - f))

    def _plan_params(self, coeffs: np.ndarray, fraction: float) -> dict[str, Any] | None:
        scaled = {
            name: [Option(o.config, o.cost, o.loss * math.exp(c)) for o in opts]
            for (name, opts), c in zip(self.options.items(), coeffs)
        }
        picked = solve(scaled, self.capacity * fraction)
        if picked is None:
            return None
        plan = {name: config for name, config in picked.configs(scaled).items() if config is not None}
        return self.to_params(plan)


def _key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in params.items()))
