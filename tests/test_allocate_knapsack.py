"""Multiple-choice knapsack: optimal against brute force, always within the capacity, a ladder."""

from __future__ import annotations

import itertools
import random

import pytest

from autoshrink.allocate.knapsack import Option, solve, solve_ladder, solve_without, spend_slack
from autoshrink.errors import UserError


def _random_options(rng: random.Random, sites: int = 4, per_site: int = 4) -> dict[str, list[Option]]:
    options = {}
    for s in range(sites):
        opts = [Option(None, 100.0, 0.0)]  # dense: expensive, lossless
        for k in range(per_site):
            opts.append(Option(f"s{s}o{k}", rng.uniform(5, 90), rng.uniform(0.01, 2.0)))
        options[f"site{s}"] = opts
    return options


def _brute_force(options, capacity):
    names = list(options)
    best = None
    for combo in itertools.product(*(range(len(options[n])) for n in names)):
        cost = sum(options[n][i].cost for n, i in zip(names, combo))
        loss = sum(options[n][i].loss for n, i in zip(names, combo))
        if cost <= capacity and (best is None or loss < best):
            best = loss
    return best


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_fits_and_is_near_the_brute_force_optimum(seed):
    rng = random.Random(seed)
    options = _random_options(rng)
    cheapest = sum(min(o.cost for o in opts) for opts in options.values())
    capacity = rng.uniform(cheapest, 300)
    exact = _brute_force(options, capacity)
    fine = solve(options, capacity, buckets=4096)
    coarse = solve(options, capacity, buckets=64)
    for sel in (fine, coarse):
        assert sel.cost <= capacity
        assert sel.loss >= exact - 1e-12
        assert sel.cost == pytest.approx(sum(options[n][i].cost for n, i in sel.choice.items()))
    assert fine.loss == pytest.approx(exact, rel=0.05)


def test_integer_costs_on_the_bucket_grid_are_solved_exactly():
    rng = random.Random(7)
    options = {f"s{s}": [Option(k, float(rng.randint(1, 20)), rng.uniform(0, 1)) for k in range(5)] for s in range(4)}
    capacity = 40.0
    assert solve(options, capacity, buckets=40).loss == pytest.approx(_brute_force(options, capacity))


def test_ladder_losses_fall_as_the_capacity_grows_and_infeasible_is_none():
    options = _random_options(random.Random(3), sites=5)
    capacities = [10.0, 60.0, 120.0, 200.0, 400.0, 600.0]
    results = solve_ladder(options, capacities, buckets=2048)
    assert results[0] is None  # five sites cannot fit in 10
    feasible = [r for r in results if r is not None]
    assert all(r is None or r.cost <= c for r, c in zip(results, capacities))
    assert [r.loss for r in feasible] == sorted((r.loss for r in feasible), reverse=True)
    assert feasible[-1].loss == 0.0  # everything dense fits in 600


def test_spend_slack_buys_the_best_upgrade_that_fits():
    options = {
        "a": [Option("a0", 10, 1.0), Option("a1", 15, 0.2), Option("a2", 30, 0.0)],
        "b": [Option("b0", 10, 0.5), Option("b1", 12, 0.4)],
    }
    upgraded = spend_slack(options, {"a": 0, "b": 0}, capacity=27)
    assert upgraded == {"a": 1, "b": 1}  # a1 gains 0.8 (cost 25), then b1 still fits (27)


def test_sites_without_options_and_bad_buckets_are_user_errors():
    with pytest.raises(UserError, match="no option"):
        solve({"a": []}, 10.0)
    with pytest.raises(UserError, match="buckets"):
        solve({"a": [Option(None, 1, 0)]}, 10.0, buckets=0)


def test_solve_without_a_method_takes_the_best_plan_of_the_others_at_the_same_indices():
    from types import SimpleNamespace

    a, b = SimpleNamespace(method="a"), SimpleNamespace(method="b")
    options = {
        "x": [Option(None, 10.0, 0.0), Option(a, 2.0, 0.1), Option(b, 3.0, 0.5)],
        "y": [Option(None, 10.0, 0.0), Option(a, 2.0, 0.2), Option(b, 2.0, 0.3)],
    }
    assert solve(options, 6.0).choice == {"x": 1, "y": 1}  # method a everywhere is the best
    without_a = solve_without(options, 6.0, "a")
    assert without_a.choice == {"x": 2, "y": 2}
    assert without_a.loss == pytest.approx(0.8)
    assert solve_without(options, 4.0, "a") is None  # b alone costs 5: nothing fits without a
    assert solve_without(options, 6.0, "b").choice == {"x": 1, "y": 1}
