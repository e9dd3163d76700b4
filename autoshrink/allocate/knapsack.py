"""Multiple-choice knapsack: one option per site, the least summed loss within a cost limit.

The allocation step of SPDY, OBC and EvoPress's DP baseline: each site has options with a cost
(stored bytes, or milliseconds for a latency budget) and a loss (the profile's loss increase);
dynamic programming over the cost, cut into `buckets` equal steps of the capacity, finds the
option per site minimising the summed loss with the summed cost within the capacity. Costs are
rounded *up* to whole buckets, so a solution of the DP also fits at exact costs; the slack the
rounding leaves is then spent exactly, by the upgrade that buys the most loss per site while it
fits. One DP answers every capacity up to the largest, so a ladder of budgets (for a front) costs
one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from autoshrink.errors import UserError

BUCKETS = 1024


@dataclass(frozen=True)
class Option:
    """One choice for one site: `config` is whatever the caller plans with (None: dense)."""

    config: Any
    cost: float
    loss: float


@dataclass(frozen=True)
class Selection:
    """The option index per site (in the order of the sites given), with summed cost and loss."""

    choice: dict[str, int]
    cost: float
    loss: float

    def configs(self, options: Mapping[str, Sequence[Option]]) -> dict[str, Any]:
        return {name: options[name][i].config for name, i in self.choice.items()}


def _totals(options: Mapping[str, Sequence[Option]], choice: Mapping[str, int]) -> tuple[float, float]:
    picked = [options[name][i] for name, i in choice.items()]
    return sum(o.cost for o in picked), sum(o.loss for o in picked)


def spend_slack(options: Mapping[str, Sequence[Option]], choice: dict[str, int], capacity: float) -> dict[str, int]:
    """Switch sites to options of lower loss while the exact total cost stays within `capacity`:
    each round takes the single switch that lowers the loss most."""
    choice = dict(choice)
    while True:
        cost, _ = _totals(options, choice)
        best, gain = None, 0.0
        for name, i in choice.items():
            current = options[name][i]
            for j, o in enumerate(options[name]):
                if current.loss - o.loss > gain and cost - current.cost + o.cost <= capacity:
                    best, gain = (name, j), current.loss - o.loss
        if best is None:
            return choice
        choice[best[0]] = best[1]


def solve_ladder(
    options: Mapping[str, Sequence[Option]], capacities: Sequence[float], buckets: int = BUCKETS
) -> list[Selection | None]:
    """The least-loss selection within each capacity (None where no selection fits)."""
    names = [name for name in options if options[name]]
    if len(names) != len(options):
        empty = [name for name in options if not options[name]]
        raise UserError(f"site(s) {', '.join(empty)} have no option (give each at least its dense option)")
    if buckets < 1:
        raise UserError(f"knapsack buckets must be >= 1, got {buckets}")
    top = max(capacities, default=0.0)
    if top <= 0:
        return [None for _ in capacities]
    step = top / buckets
    # Exact costs above one bucket's worth round up; a hair of float noise does not add a bucket.
    weights = {name: np.array([max(0, math.ceil(o.cost / step - 1e-9)) for o in options[name]]) for name in names}
    losses = {name: np.array([o.loss for o in options[name]], dtype=float) for name in names}
    best = np.full(buckets + 1, np.inf)  # best[b]: least loss of the sites so far at total weight b
    best[0] = 0.0
    picks = []  # per site: the option index reaching each weight
    for name in names:
        new, pick = np.full(buckets + 1, np.inf), np.full(buckets + 1, -1)
        for i, (w, loss) in enumerate(zip(weights[name], losses[name])):
            if w > buckets:
                continue
            shifted = np.full(buckets + 1, np.inf)
            shifted[w:] = best[: buckets + 1 - w] + loss
            better = shifted < new
            new[better], pick[better] = shifted[better], i
        best = new
        picks.append(pick)
    results: list[Selection | None] = []
    for capacity in capacities:
        limit = min(buckets, int(math.floor(capacity / step + 1e-9)))
        if limit < 0 or not np.isfinite(best[: limit + 1]).any():
            results.append(None)
            continue
        weight = int(np.argmin(best[: limit + 1]))
        choice: dict[str, int] = {}
        for name, pick in zip(reversed(names), reversed(picks)):
            choice[name] = int(pick[weight])
            weight -= int(weights[name][choice[name]])
        choice = spend_slack(options, {name: choice[name] for name in names}, capacity)
        cost, loss = _totals(options, choice)
        results.append(Selection(choice, cost, loss))
    return results


def solve(options: Mapping[str, Sequence[Option]], capacity: float, buckets: int = BUCKETS) -> Selection | None:
    """The least-loss selection within `capacity`, or None if even the cheapest options exceed it."""
    return solve_ladder(options, [capacity], buckets)[0]


def solve_without(
    options: Mapping[str, Sequence[Option]], capacity: float, excluded: Any, buckets: int = BUCKETS
) -> Selection | None:
    """The least-loss selection within `capacity` that takes no option whose config's `method` is
    `excluded` (None if no such selection fits). Indices are those of `options`: excluded options
    stay in place at an infinite loss, so the solver never picks them."""
    masked = {
        name: [Option(o.config, o.cost, math.inf) if getattr(o.config, "method", None) == excluded else o for o in opts]
        for name, opts in options.items()
    }
    selection = solve(masked, capacity, buckets)
    return selection if selection is not None and math.isfinite(selection.loss) else None
