"""Joint refinement: per-site losses do not add up (EvoPress; docs/methods.md pitfall 13), so the
knapsack's best candidates are evaluated as whole plans and the best is improved by moves that
keep it within the limit, still without training.

Candidates (SPDY's idea): the knapsack solution, then the knapsack re-solved with each site's
losses scaled by a random factor in [1/2, 2], which gives other plans that fit the limit and are
near-optimal for the profile. The best of them (the knapsack's own unless another is better by
more than the slice's noise) seeds an elitist (1 + lambda) evolutionary loop as in EvoPress: an
offspring moves one to three random sites one level up their ladder (the site's
options that no other option of the site beats on both cost and loss), then random other sites
one level down until it fits again; offspring that spend less than 80% of what they freed, or
change more than ten levels, are dropped unevaluated (EvoPress's filters). Every plan is
evaluated once (a memo), and the number of evaluations is bounded. A plan takes over only if it
wins by more than two standard errors of the per-token loss difference: measured on kjv-lstm at
25x, the plan with the lowest mean on a 4,000-token slice (by 0.003 nats) was 2% worse in
perplexity than the knapsack's on 12,000 other validation tokens (results/allocate.md).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from autoshrink.allocate.knapsack import BUCKETS, Option, solve

Choice = dict[str, int]  # site -> index into its options
MAX_FLIPS = 3
MAX_LEVEL_CHANGES = 10
MIN_SPENT_FRACTION = 0.8
COEF_RANGE = 2.0  # reweighting factors lie in [1/COEF_RANGE, COEF_RANGE]
# A new plan must win by this many standard errors of the paired per-token difference. Up to
# `max_evals` plans are each compared with the incumbent, so the one-sided 5% is shared among them
# (Bonferroni): with 2 standard errors and 30 plans, half of all noise-only slices crowned a plan.
FAMILY_ALPHA = 0.05


def significance(max_evals: int) -> float:
    """z of a one-sided test at FAMILY_ALPHA / max_evals: about 3.1 for 48 plans."""
    return statistics.NormalDist().inv_cdf(1.0 - FAMILY_ALPHA / max(1, max_evals))


@dataclass(frozen=True)
class Scored:
    choice: Choice
    cost: float
    loss: float  # joint loss (the evaluator's), not the profile's sum
    source: str  # "knapsack", "reweighted", "evolved"


def _cost(options: Mapping[str, Sequence[Option]], choice: Mapping[str, int]) -> float:
    return sum(options[name][i].cost for name, i in choice.items())


def ladders(options: Mapping[str, Sequence[Option]], keep: Sequence[Choice] = ()) -> dict[str, list[int]]:
    """Per site, the indices of its undominated options (and of those in `keep`), cheapest first."""
    result = {}
    for name, opts in options.items():
        order = sorted(range(len(opts)), key=lambda i: (opts[i].cost, opts[i].loss))
        front, best = [], math.inf
        for i in order:
            if opts[i].loss < best:
                front.append(i)
                best = opts[i].loss
        kept = {c[name] for c in keep if name in c}
        result[name] = sorted(set(front) | kept, key=lambda i: (opts[i].cost, opts[i].loss))
    return result


def candidates(
    options: Mapping[str, Sequence[Option]], capacity: float, count: int, seed: int = 0, buckets: int = BUCKETS
) -> list[tuple[Choice, str]]:
    """Up to `count` distinct knapsack plans within `capacity`: the plain one first, then ones
    solved with randomly reweighted site losses."""
    rng = random.Random(seed)
    plain = solve(options, capacity, buckets)
    if plain is None:
        return []
    found = [(plain.choice, "knapsack")]
    for _ in range(4 * count):
        if len(found) >= count:
            break
        scale = {name: math.exp(rng.uniform(-math.log(COEF_RANGE), math.log(COEF_RANGE))) for name in options}
        scaled = {
            name: [Option(o.config, o.cost, o.loss * scale[name]) for o in opts] for name, opts in options.items()
        }
        other = solve(scaled, capacity, buckets)
        if other is not None and all(other.choice != c for c, _ in found):
            found.append((other.choice, "reweighted"))
    return found


def _mutate(
    options: Mapping[str, Sequence[Option]],
    steps: dict[str, list[int]],
    parent: Choice,
    capacity: float,
    rng: random.Random,
) -> Choice | None:
    child = dict(parent)
    position = {name: steps[name].index(i) for name, i in parent.items()}
    flips = min(rng.randint(1, MAX_FLIPS), rng.randint(1, MAX_FLIPS))  # fewer flips more often
    added = freed = 0.0
    raised = set()
    for _ in range(flips):
        up = [n for n in child if position[n] + 1 < len(steps[n])]
        if not up:
            return None
        name = rng.choice(up)
        before = options[name][child[name]].cost
        position[name] += 1
        child[name] = steps[name][position[name]]
        added += options[name][child[name]].cost - before
        raised.add(name)
    changes = flips
    while _cost(options, child) > capacity:
        down = [n for n in child if position[n] > 0 and n not in raised]
        if not down or changes >= MAX_LEVEL_CHANGES:
            return None
        name = rng.choice(down)
        before = options[name][child[name]].cost
        position[name] -= 1
        child[name] = steps[name][position[name]]
        freed += before - options[name][child[name]].cost
        changes += 1
    if freed > 0 and added < MIN_SPENT_FRACTION * freed:
        return None
    return child


def _beats(challenger: Scored, incumbent: Scored, tokens: dict[tuple, np.ndarray], z: float) -> bool:
    """Whether `challenger` has the lower loss by more than `z` standard errors of the paired
    per-token difference (by any margin when the evaluator gives one number per plan)."""
    if challenger.loss >= incumbent.loss:
        return False
    a, b = tokens.get(_key(challenger.choice)), tokens.get(_key(incumbent.choice))
    if a is None or b is None or a.size < 2:
        return True
    diff = a - b
    return -diff.mean() > z * diff.std(ddof=1) / math.sqrt(diff.size)


def _key(choice: Mapping[str, int]) -> tuple:
    return tuple(sorted(choice.items()))


def refine(
    options: Mapping[str, Sequence[Option]],
    capacity: float,
    evaluate: Callable[[Choice], float | Sequence[float]],
    starts: Sequence[tuple[Choice, str]],
    max_evals: int = 48,
    offspring: int = 4,
    seed: int = 0,
    z: float | None = None,
    on_eval: Callable[[Scored], None] | None = None,
) -> list[Scored]:
    """Every plan evaluated: the one the refinement stands by first, then the others by joint loss.

    `evaluate(choice)` is the joint loss of a whole plan, or the loss of each token of a fixed
    slice (their mean is the loss); at most `max_evals` calls are made. With per-token losses a
    plan replaces the incumbent (the first start, then the best so far) only when it is better by
    more than `z` standard errors of the paired difference (default: `significance(max_evals)`):
    on a slice of a few thousand tokens a smaller gain is as likely noise of the slice as a better plan."""
    z = significance(max_evals) if z is None else z
    rng = random.Random(seed)
    seen: dict[tuple, Scored] = {}
    tokens: dict[tuple, np.ndarray] = {}

    def score(choice: Choice, source: str) -> Scored | None:
        key = _key(choice)
        if key in seen:
            return seen[key]
        if len(seen) >= max_evals:
            return None
        values = np.asarray(evaluate(choice), dtype=float).reshape(-1)
        scored = Scored(dict(choice), _cost(options, choice), float(values.mean()), source)
        seen[key] = scored
        if values.size > 1:
            tokens[key] = values
        if on_eval is not None:
            on_eval(scored)
        return scored

    scored_starts = [s for s in (score(c, src) for c, src in starts) if s is not None]
    if not scored_starts:
        return []
    parent = scored_starts[0]
    for other in scored_starts[1:]:
        parent = other if _beats(other, parent, tokens, z) else parent
    steps = ladders(options, [c for c, _ in starts])
    stale = 0
    while len(seen) < max_evals and stale < 20 * offspring:
        children = []
        for _ in range(offspring):
            child = _mutate(options, steps, parent.choice, capacity, rng)
            if child is None or _key(child) in seen:
                stale += 1
                continue
            result = score(child, "evolved")
            if result is not None:
                children.append(result)
        if children:
            stale = 0
            best_child = min(children, key=lambda s: s.loss)
            parent = best_child if _beats(best_child, parent, tokens, z) else parent
    others = sorted((s for s in seen.values() if s is not parent), key=lambda s: s.loss)
    return [parent, *others]
