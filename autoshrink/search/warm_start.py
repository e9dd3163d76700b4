"""Warm start: a new search's first trials are single-method plans, one method on every site with
its size knob fitted to the budget (budget.uniform_plan), so the front starts from the best
uniform plan and the per-layer choices that follow have to beat it.

Only methods the space offers on every compressible site are used (for the default space: low-rank,
pruning, quantisation). Each becomes the Optuna parameters that `space.sample_plan` would
suggest, enqueued with `study.enqueue_trial`, so both backends (Optuna's optimize and the Ray
searcher's ask) run them first and the sampler learns from them like from any other trial.
Values are clamped into the space's ranges; the repair that every sampled plan goes through
then keeps the budget.

Storage width: given a `score` (the search passes each plan's loss before training on the
allocation's held-out slice), a method with a `bits` knob is fitted at every width the space
offers all its roles and the best is kept, as the benchmark's single-method entrants are
(bench/entrants.py): fewer bits buy larger ranks, and at 25x-100x of the reference LSTM 4-bit
low-rank beat 8-bit after training. Without a score the width is PREFERRED_BITS.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna

from autoshrink.plan.bytes import ModelFile
from autoshrink.plan.fit import best_width, uniform_plan
from autoshrink.methods import config_class
from autoshrink.search.space import DENSE, Knob, SearchSpace, applies

PREFERRED_BITS = 8  # near-lossless storage for the method's tensors: spend the bytes on its size knob


def _base_knobs(method: str, knob_sets: list[dict[str, Knob]]) -> dict[str, Any]:
    """The method's defaults, brought into every role's ranges; bits at 8 where all roles allow it."""
    cls = config_class(method)
    defaults = cls()
    values: dict[str, Any] = {}
    names = {name for knobs in knob_sets for name in knobs} - {cls.size_knob}
    for name in names:
        value = getattr(defaults, name)
        if name == "bits" and all(PREFERRED_BITS in (k["bits"].choices or ()) for k in knob_sets if "bits" in k):
            value = PREFERRED_BITS
        for knobs in knob_sets:
            if name in knobs:
                value = knobs[name].nearest(value)
        values[name] = value
    return values


def _candidates(method: str, knob_sets: list[dict[str, Knob]]) -> list[dict[str, Any]]:
    """The defaults first; then, if those cannot reach the budget, the other ranged knobs at the
    top of their ranges (GroupReduce's default 4 blocks leave its head block dense: 10 reach
    6.6x on a 10k vocabulary)."""
    base = _base_knobs(method, knob_sets)
    size = config_class(method).size_knob
    tops = {
        name: min(k[name].high for k in knob_sets if name in k)
        for name in base
        if name not in (size, "bits") and all(name in k and k[name].high is not None for k in knob_sets)
    }
    return [base, {**base, **tops}] if tops else [base]


def _widths(knob_sets: list[dict[str, Knob]]) -> list[int]:
    """The storage widths every role's `bits` knob allows (empty when some role has none to choose)."""
    if not all("bits" in k and k["bits"].choices for k in knob_sets):
        return []
    return sorted(set.intersection(*(set(k["bits"].choices) for k in knob_sets)))


def uniform_seeds(
    space: SearchSpace,
    sites: list,
    max_bytes: int,
    freqs=None,
    model_file: ModelFile | None = None,
    score: Callable[[dict], float] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(method, Optuna params) for each method the space offers on every compressible site and
    that can meet `max_bytes` alone; at its best storage width by `score` when one is given."""
    owned = [s for s in sites if s.tied_with is None]
    options = {s.name: [m for m in space.methods_for(s) if m == DENSE or applies(m, s)] for s in owned}
    compressible = [s for s in owned if options[s.name]]
    if not compressible:
        return []
    common = [
        m for m in options[compressible[0].name] if m != DENSE and all(m in options[s.name] for s in compressible)
    ]

    def in_space(fitted: dict) -> dict:  # what a seed trains: every knob brought into the space
        return {site.name: space.within(site, fitted[site.name]) for site in compressible}

    def per_role(site, base):  # each site fitted with its role's knobs (a vocabulary U's storage)
        return space.within(site, base)

    seeds = []
    for method in common:
        knob_sets = [space.roles[s.role][method] for s in compressible]
        widths = _widths(knob_sets) if config_class(method).size_knob != "bits" else []
        roles = {s.role for s in compressible}  # the sites the space leaves dense keep their bytes
        plan = None
        for knobs in _candidates(method, knob_sets):
            base = config_class(method)(**knobs)
            if score is not None and len(widths) > 1:  # scored as it will train (a rank the space caps, capped)
                plan, _ = best_width(
                    base, widths, sites, max_bytes, lambda p: score(in_space(p)), freqs, model_file, roles, per_role
                )
            else:
                plan = uniform_plan(
                    base.replace(bits=widths[0]) if len(widths) == 1 else base,
                    sites,
                    max_bytes,
                    freqs,
                    model_file,
                    roles,
                    per_role,
                )
            if plan is not None:
                break
        if plan is None:
            continue
        seeds.append((method, space.params_of(in_space(plan), sites)))
    return seeds


def enqueue_uniform_seeds(study: optuna.Study, seeds: list[tuple[str, dict[str, Any]]], after: int = 0) -> int:
    """Enqueue the seeds into a study that has no trials yet but the `after` ones queued before
    them (a resumed search keeps its history)."""
    if len(study.get_trials(deepcopy=False)) > after:
        return 0
    for method, params in seeds:
        study.enqueue_trial(params, user_attrs={"warm_start": f"uniform {method}"})
    return len(seeds)
