"""Refinement: diverse knapsack candidates, bounded joint evaluations, never over the limit, and
better plans where the per-site losses do not add up."""

from __future__ import annotations

import random

from autoshrink.allocate.knapsack import Option, solve
from autoshrink.allocate.refine import candidates, ladders, refine


def _ladder_options(sites: int = 5, levels: int = 6, seed: int = 0) -> dict[str, list[Option]]:
    """Each site: costs 10, 20, ... with losses falling as the cost grows (dense last, loss 0)."""
    rng = random.Random(seed)
    options = {}
    for s in range(sites):
        scale = rng.uniform(0.5, 2.0)
        options[f"s{s}"] = [Option(f"s{s}l{k}", 10.0 * (k + 1), scale / (k + 1) ** 1.5) for k in range(levels)]
        options[f"s{s}"].append(Option(None, 10.0 * (levels + 2), 0.0))
    return options


def _additive(options):
    return lambda choice: sum(options[n][i].loss for n, i in choice.items())


def test_candidates_are_distinct_plans_within_the_capacity_knapsack_first():
    options = _ladder_options()
    found = candidates(options, 150.0, count=5, seed=1)
    assert found[0] == (solve(options, 150.0).choice, "knapsack")
    assert len(found) > 1 and all(src == "reweighted" for _, src in found[1:])
    assert len({tuple(sorted(c.items())) for c, _ in found}) == len(found)
    assert all(sum(options[n][i].cost for n, i in c.items()) <= 150.0 for c, _ in found)


def test_refine_counts_its_evaluations_and_keeps_every_plan_within_the_limit():
    options = _ladder_options()
    calls = []

    def evaluate(choice):
        calls.append(dict(choice))
        return _additive(options)(choice)

    starts = candidates(options, 150.0, count=3)
    result = refine(options, 150.0, evaluate, starts, max_evals=20, seed=0)
    assert len(calls) == len(result) <= 20
    assert len({tuple(sorted(c.items())) for c in calls}) == len(calls)  # nothing evaluated twice
    assert all(r.cost <= 150.0 for r in result)
    assert [r.loss for r in result] == sorted(r.loss for r in result)
    # With additive losses the knapsack is optimal: evolution cannot beat it.
    assert result[0].loss == min(r.loss for r in result if r.source == "knapsack")


def test_refine_beats_the_knapsack_when_sites_interact():
    options = _ladder_options(seed=3)
    knap = solve(options, 150.0).choice

    def evaluate(choice):
        # Two sites whose errors compound: the knapsack's pick is penalised, other plans are not.
        penalty = 5.0 if choice["s0"] == knap["s0"] and choice["s1"] == knap["s1"] else 0.0
        return _additive(options)(choice) + penalty

    result = refine(options, 150.0, evaluate, [(knap, "knapsack")], max_evals=40, seed=0)
    knapsack_score = next(r for r in result if r.source == "knapsack")
    assert result[0].loss < knapsack_score.loss - 4.0
    assert result[0].source == "evolved" and result[0].cost <= 150.0


def test_ladders_drop_dominated_options_but_keep_those_in_use():
    options = {"a": [Option("cheap", 10, 1.0), Option("worse", 20, 2.0), Option("good", 30, 0.5)]}
    assert ladders(options) == {"a": [0, 2]}
    assert ladders(options, [{"a": 1}]) == {"a": [0, 1, 2]}


def _per_token(options, noise: float, penalty_for=None, tokens: int = 200, salt: int = 0):
    """Per-token losses: the additive loss on every token, plus noise that differs between plans."""
    import zlib

    import numpy as np

    def evaluate(choice):
        key = zlib.crc32(repr((salt, sorted(choice.items()))).encode())  # stable across runs (hash() is salted)
        base = _additive(options)(choice) + (5.0 if penalty_for is not None and penalty_for(choice) else 0.0)
        return base + noise * np.random.default_rng(key).standard_normal(tokens)

    return evaluate


def test_with_per_token_losses_only_a_significant_win_replaces_the_knapsack_plan():
    options = _ladder_options(seed=3)
    knap = solve(options, 150.0).choice
    # Noisy slices, no real gain to find (the knapsack is optimal): lower means come from noise
    # and must not win, on any of ten slices.
    fooled = 0
    for salt in range(10):
        noisy = refine(
            options, 150.0, _per_token(options, noise=3.0, salt=salt), [(knap, "knapsack")], max_evals=30, seed=0
        )
        assert noisy[0].choice == knap, f"slice {salt}: noise crowned a plan"
        fooled += min(r.loss for r in noisy) < noisy[0].loss  # a lower mean was seen, and not believed
    assert fooled >= 3
    # A consistent penalty on the knapsack's pair of sites is a real difference: it is found.
    penalised = _per_token(options, noise=0.5, penalty_for=lambda c: c["s0"] == knap["s0"] and c["s1"] == knap["s1"])
    found = refine(options, 150.0, penalised, [(knap, "knapsack")], max_evals=30, seed=0)
    assert found[0].source == "evolved"
    assert found[0].loss < next(r for r in found if r.source == "knapsack").loss - 4.0
