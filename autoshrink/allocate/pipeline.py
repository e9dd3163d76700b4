"""allocate(): profile every site's options, solve the knapsack for the byte limit (and a ladder of
limits below it), evaluate the best candidates jointly and refine them; no training anywhere.

Zoom: the levels are a geometric grid (steps of 1.1-1.4x in bytes), so a sensitive site can be held
a whole step below what the limit could give it (the softmax at GroupReduce rank 4 when 7 was
40 KB away). After a first knapsack, the gaps on either side of each site's chosen level are
profiled at ZOOM more sizes of the same method and width, and the knapsack is solved again.

Hedges: the proxy's errors are per method (a method that training repairs more, or less, than its
loss before training says: 2-3 bit quantisation looked cheaper than low-rank on kjv-lstm's input
matrices and trained worse, results/search.md), so besides its best plan the allocation gives, for
each method that plan uses, the knapsack's best plan without that method, evaluated jointly. The
search trains the best two right after the allocation's own plan, and training decides.

Costs are whole-model stored bytes, the file's header included: the model's dense parts (biases,
parameters outside any site) are fixed, each site adds its method's bytes (and the bias it keeps)
or, left dense, its dense bytes, each with its share of the header. The exact header does not add
up over sites (its padding and the digits of every offset depend on the other tensors), so the
knapsack adds `plan_bytes_bound`, an upper bound that does; every returned plan is checked against
the limit with the exact `plan_stored_bytes`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import nn

from autoshrink.allocate.knapsack import BUCKETS, Option, solve, solve_ladder, solve_without
from autoshrink.allocate.levels import LEVELS, SMALLEST_FRACTION, ZOOM, site_options, zoom_levels
from autoshrink.allocate.profile import OptionMap, profile, row_config
from autoshrink.allocate.refine import Scored, candidates, refine
from autoshrink.allocate.replay import Replay, build_site
from autoshrink.errors import UserError
from autoshrink.methods import MethodConfig, config_from_dict
from autoshrink.models.discover import discover_sites
from autoshrink.plan import ModelFile, Plan, plan_bytes_bound, plan_stored_bytes
from autoshrink.plan.fit import toward_uniform

LADDER = (0.7, 0.8, 0.9, 1.0)  # fractions of the limit the knapsack also answers, for a front
# Untrained, the profile says how unequal the sites' sizes should be; trained, they want less: on
# the LSTM layers at 25x, ranks 49/29/49/80 (the allocation) test 40.26 after the quick tier's 200
# steps, 52 each (uniform) 40.29, a quarter, half and three quarters of the way between 40.18, 40.15
# and 40.19 (results/toward_uniform-lstm-25x.md). So the search also trains the allocation's plan
# moved this share of the way to a uniform plan's sizes.
TOWARD_UNIFORM = 0.5
TOP_K = 4  # knapsack candidates evaluated jointly before the evolutionary refinement
MAX_EVALS = 48  # joint evaluations in all (candidates included)
SLICE_TOKENS = 4000  # validation tokens the profile and the joint evaluations use by default


class NoPlanFits(UserError):
    """The profiled options cannot make a plan within the limit (their smallest sizes add up to more)."""


@dataclass(frozen=True)
class Allocated:
    """One whole plan: its stored bytes, profile loss (sum over sites) and joint loss (None
    where not evaluated jointly), as mean NLL increases per token over the dense model."""

    plan: Plan
    bytes: int
    profile_loss: float | None  # None: a plan of sizes the profile did not measure (toward_uniform)
    joint_loss: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": {n: c.to_dict() for n, c in self.plan.items()},
            "bytes": self.bytes,
            "profile_loss": self.profile_loss,
            "joint_loss": self.joint_loss,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Allocated":
        """The inverse of to_dict (allocation.json)."""
        plan = {n: config_from_dict(c) for n, c in d["plan"].items()}
        profile_loss = None if d["profile_loss"] is None else float(d["profile_loss"])
        return cls(plan, int(d["bytes"]), profile_loss, d["joint_loss"], str(d["source"]))


@dataclass
class Allocation:
    plans: list[Allocated]  # jointly evaluated plans within the limit: the refinement's choice, then by joint loss
    ladder: dict[float, Allocated | None]  # the knapsack plan at each fraction of the limit, jointly evaluated
    table: pd.DataFrame  # the profile
    dense_loss: float  # mean NLL per token of the dense model on the slice
    limit: int
    seconds: dict[str, float] = field(default_factory=dict)
    hedges: list[Allocated] = field(default_factory=list)  # the best plan without each of its methods, by joint loss
    zoomed: dict[str, list[MethodConfig]] = field(default_factory=dict)  # the options the zoom added, per site
    toward_uniform: Allocated | None = None  # the best plan's sizes moved halfway to a uniform plan's

    @property
    def best(self) -> Allocated:
        return self.plans[0]


def knapsack_options(
    table: pd.DataFrame,
    sites: Sequence,
    model_file: ModelFile,
    freqs: torch.Tensor | None = None,
    may_stay_dense: Callable[[str], bool] | None = None,
) -> dict[str, list[Option]]:
    """Per site: dense (its dense bytes, no loss) first where `may_stay_dense(site)` allows it
    (every site by default), then each profiled option, costed as the
    bytes the site holds in the whole model (`site_cost`). Whole-model bytes <= fixed bytes + the
    sum of costs."""
    options = {
        s.name: [Option(None, float(s.dense_bytes), 0.0)] if may_stay_dense is None or may_stay_dense(s.name) else []
        for s in sites
        if s.tied_with is None
    }
    for row in table.to_dict("records"):
        config = row_config(row)
        cost = site_cost(sites, row["site"], config, model_file, freqs)
        options[row["site"]].append(Option(config, float(cost), float(row["loss_delta"])))
    return options


def zoomed_options(
    choice: Mapping[str, int],
    knap: Mapping[str, Sequence[Option]],
    per_site: Mapping[str, Sequence[MethodConfig]],
    by_name: Mapping[str, Any],
    per_gap: int,
    freqs: torch.Tensor | None,
    admit: Callable[[str, MethodConfig], MethodConfig | None] | None = None,
) -> dict[str, list[MethodConfig]]:
    """Per site of `choice`, the sizes next to its chosen level not profiled yet (levels.zoom_levels)."""
    extra: dict[str, list[MethodConfig]] = {}
    for name, i in choice.items():
        config = knap[name][i].config
        if config is None:
            continue
        new: list[MethodConfig] = []
        for c in zoom_levels(by_name[name], config, per_site[name], per_gap, freqs):
            c = admit(name, c) if admit is not None else c
            if c is not None and c not in per_site[name] and c not in new:
                new.append(c)
        if new:
            extra[name] = new
    return extra


def site_cost(
    sites: Sequence, name: str, config: MethodConfig, model_file: ModelFile, freqs: torch.Tensor | None
) -> int:
    """The bytes a site holds in the whole model under `config` (its method's bytes, the bias it
    keeps and their header entries), as plan_bytes_bound counts them: fixed_bytes plus the costs
    of a plan's sites is that plan's bound, at least its exact plan_stored_bytes."""
    dense = next(s.dense_bytes for s in sites if s.name == name)
    return plan_bytes_bound(sites, {name: config}, freqs, model_file) - (_dense_bound(sites, model_file) - dense)


def _dense_bound(sites: Sequence, model_file: ModelFile) -> int:
    return plan_bytes_bound(list(sites), {}, None, model_file)


def level_caps(
    sites: Sequence,
    options: Mapping[str, Sequence[MethodConfig]],
    capacity: int,
    model_file: ModelFile,
    freqs: torch.Tensor | None,
) -> dict[str, int]:
    """Per site, the most method bytes an option can have and still be part of a plan within the
    capacity: what is left when every other site takes its cheapest option (and this one its bias)."""
    by_name = {s.name: s for s in sites}
    cheapest = {
        name: min([by_name[name].dense_bytes] + [site_cost(sites, name, c, model_file, freqs) for c in configs])
        for name, configs in options.items()
    }
    total = sum(cheapest.values())
    bias = {name: 4 * by_name[name].shape[0] if by_name[name].bias else 0 for name in options}
    return {name: capacity - (total - cheapest[name]) - bias[name] for name in options}


def capped_options(
    sites: Sequence, bases, capacity: int, model_file: ModelFile, freqs: torch.Tensor | None, levels: int = LEVELS
) -> dict[str, list[MethodConfig]]:
    """The levels of `bases` on every site (`site_options`), spread over only the bytes a site can
    have within `capacity`: none wasted on sizes no plan can take. The smallest level is at most
    half the share of their dense bytes the sites may keep, so that every site can take one
    of its small levels at once (at 100x the sites keep about 1%, the default smallest level)."""
    share = capacity / max(1, sum(s.dense_bytes for s in sites if s.tied_with is None))
    smallest = min(SMALLEST_FRACTION, max(share, 0.0) / 2) or SMALLEST_FRACTION
    caps = level_caps(sites, site_options(sites, bases, levels, freqs, smallest=smallest), capacity, model_file, freqs)
    return site_options(sites, bases, levels, freqs, caps=caps, smallest=smallest)


def fixed_bytes(sites: Sequence, model_file: ModelFile) -> int:
    """What the model stores outside its sites (parameters no plan can touch, and the header's
    share that no site owns), as plan_bytes_bound counts it."""
    return _dense_bound(sites, model_file) - sum(s.dense_bytes for s in sites if s.tied_with is None)


def allocate(
    model: nn.Module,
    valid_ids: torch.Tensor,
    options: Mapping[str, Sequence[MethodConfig]] | Sequence[MethodConfig] | Mapping[str, Any],
    limit: int,
    *,
    freqs: torch.Tensor | None = None,
    stats: Mapping[str, Any] | None = None,
    levels: int = LEVELS,
    profile_path: str | Path | None = None,
    ladder: Sequence[float] = LADDER,
    buckets: int = BUCKETS,
    top_k: int = TOP_K,
    max_evals: int = MAX_EVALS,
    finetune_steps: int = 0,
    train_ids: torch.Tensor | None = None,
    finetune_methods: Sequence[str] | None = None,
    tokens: int | None = SLICE_TOKENS,
    seed: int = 0,
    progress: bool = True,
    may_stay_dense: Callable[[str], bool] | None = None,
    map_options: OptionMap | None = None,
    zoom: int = ZOOM,
    admit: Callable[[str, MethodConfig], MethodConfig | None] | None = None,
) -> Allocation:
    """Plans for `model` within `limit` stored bytes, chosen on the first `tokens` of `valid_ids`
    (all of them with None).

    `options`: {site name: [configs]} measured as given (plus the zoom's sizes), or base configs (one list for every
    site, or {role: [configs]}) expanded into `levels` size levels per site. `freqs`: word
    frequencies for vocabulary methods (model.vocab.freqs by default); `stats`: per-site
    calibration statistics passed to data-aware builds; `may_stay_dense(site)`: whether a plan may
    leave the site dense (a search's space may not allow it); `map_options`: how the profile's
    options are measured (profile.py; one after another here by default). With `finetune_steps`,
    the options of `finetune_methods` (profile.py's default: those a one-shot proxy misjudges)
    get that many steps of training on `train_ids`, each site alone, before they are measured.
    `zoom`: sizes profiled in each gap next to the first knapsack's choices (0: none); `admit(site,
    config)`: such a size as the caller may plan it (a search moves it into its space), None to
    drop it.
    """
    times: dict[str, float] = {}
    start = time.perf_counter()
    valid_ids = valid_ids.reshape(-1)[:tokens] if tokens is not None else valid_ids.reshape(-1)
    if freqs is None and getattr(model, "vocab", None) is not None:
        freqs = model.vocab.freqs
    sites = discover_sites(model)
    by_name = {s.name: s for s in sites}
    model_file = ModelFile.of(model, sites)
    fixed = fixed_bytes(sites, model_file)
    capacity = limit - fixed
    if capacity <= 0:
        raise UserError(f"limit {limit:,} bytes is below the {fixed:,} bytes the model keeps outside its sites")
    exact = isinstance(options, Mapping) and options and all(name in by_name for name in options)
    if exact:
        per_site = {n: list(c) for n, c in options.items()}
    else:  # levels over the bytes a site can have within the limit: none wasted on sizes no plan can take
        per_site = capped_options(sites, options, capacity, model_file, freqs, levels)

    replay = Replay(model, valid_ids)
    times["replay"] = time.perf_counter() - start
    measuring = dict(
        freqs=freqs,
        stats=stats,
        path=profile_path,
        replay=replay,
        finetune_steps=finetune_steps,
        train_ids=train_ids,
        **({} if finetune_methods is None else {"finetune_methods": finetune_methods}),
        progress=progress,
        map_options=map_options,
    )

    def measured(per_site: Mapping[str, Sequence[MethodConfig]]) -> tuple[pd.DataFrame, dict[str, list[Option]]]:
        table = profile(model, valid_ids, per_site, **measuring)
        return table, knapsack_options(table, sites, model_file, freqs, may_stay_dense)

    table, knap = measured(per_site)
    times["profile"] = time.perf_counter() - start - times["replay"]
    extra: dict[str, list[MethodConfig]] = {}
    if zoom:
        first = solve(knap, capacity, buckets)
        extra = zoomed_options(first.choice, knap, per_site, by_name, zoom, freqs, admit) if first else {}
        if extra:
            t = time.perf_counter()
            table, knap = measured({name: configs + extra.get(name, []) for name, configs in per_site.items()})
            times["zoom"] = time.perf_counter() - t

    def allocated(choice: Mapping[str, int], joint: float | None, source: str) -> Allocated:
        plan = {name: knap[name][i].config for name, i in choice.items() if knap[name][i].config is not None}
        nbytes = plan_stored_bytes(sites, plan, freqs, model_file)
        if nbytes > limit:  # the knapsack rounds costs up and adds header bounds: a bug, not bad input
            raise AssertionError(f"allocated plan stores {nbytes:,} bytes, over the limit {limit:,}")
        return Allocated(plan, nbytes, sum(knap[n][i].loss for n, i in choice.items()), joint, source)

    t = time.perf_counter()
    fractions = sorted(set(ladder) | {1.0})
    solved = solve_ladder(knap, [f * limit - fixed for f in fractions], buckets)
    if solved[fractions.index(1.0)] is None:
        raise NoPlanFits(f"no plan of the given options fits {limit:,} bytes")
    starts = candidates(knap, capacity, top_k, seed, buckets)
    times["knapsack"] = time.perf_counter() - t

    joint = JointLoss(model, by_name, knap, replay, freqs, stats)
    t = time.perf_counter()
    bar = _bar(max_evals, progress)
    scored: list[Scored] = refine(
        knap, capacity, joint, starts, max_evals=max_evals, seed=seed, on_eval=lambda s: bar.update(1)
    )
    bar.close()
    times["refine"] = time.perf_counter() - t
    plans = [allocated(s.choice, s.loss, s.source) for s in scored]
    steps_ladder = _ladder_plans(fractions, solved, scored, joint, allocated)
    methods = sorted({c.method for c in plans[0].plan.values()})
    hedges = _hedges(knap, capacity, methods, buckets, joint, allocated)
    halfway = _toward_uniform(plans[0], sites, limit, freqs, model_file, admit, joint)
    times["total"] = time.perf_counter() - start
    return Allocation(plans, steps_ladder, table, replay.dense_loss, limit, times, hedges, extra, halfway)


def _toward_uniform(
    best: Allocated, sites, limit: int, freqs, model_file: ModelFile, admit, joint: "JointLoss"
) -> Allocated | None:
    """The best plan with each site's size moved TOWARD_UNIFORM of the way to a uniform plan's
    (plan/fit.toward_uniform), each config as the caller may plan it (`admit`), evaluated jointly;
    None where no such plan fits or it is the best plan itself."""
    plan = toward_uniform(dict(best.plan), TOWARD_UNIFORM, list(sites), limit, freqs, model_file, admit)
    if plan is None:
        return None
    if plan == best.plan:
        return None
    nbytes = plan_stored_bytes(sites, plan, freqs, model_file)  # within the limit: toward_uniform measured it so
    return Allocated(plan, nbytes, None, float(joint.of_plan(plan).mean()), "halfway to uniform sizes")


def _ladder_plans(fractions, solved, scored: Sequence[Scored], joint: "JointLoss", allocated) -> dict:
    """The knapsack's plan at each fraction of the limit (None where none fits), each with its
    joint loss: the ladder's plans seed a front (the full limit's is the refinement's start)."""
    known = {tuple(sorted(s.choice.items())): s.loss for s in scored}
    out = {}
    for fraction, sel in zip(fractions, solved):
        if sel is None:
            out[fraction] = None
            continue
        key = tuple(sorted(sel.choice.items()))
        loss = known[key] if key in known else joint.mean(sel.choice)
        out[fraction] = allocated(sel.choice, loss, f"knapsack at {fraction:g} of the limit")
    return out


def _hedges(knap, capacity: float, methods: Sequence[str], buckets: int, joint: "JointLoss", allocated) -> list:
    """For each method of the best plan, the knapsack's best plan without it, by joint loss."""
    hedges = []
    for method in methods:
        sel = solve_without(knap, capacity, method, buckets)
        if sel is not None:
            hedges.append(allocated(sel.choice, joint.mean(sel.choice), f"knapsack without {method}"))
    return sorted(hedges, key=lambda a: a.joint_loss)


class JointLoss:
    """A plan's loss evaluated jointly: every site of a knapsack choice built (each option once,
    kept for the next plan that takes it) and the whole model replayed on the slice."""

    def __init__(self, model, by_name, knap: Mapping[str, Sequence[Option]], replay: Replay, freqs, stats):
        self.model, self.by_name, self.knap, self.replay = model, by_name, knap, replay
        self.freqs, self.stats = freqs, stats
        self.built: dict[tuple[str, MethodConfig], Any] = {}

    def __call__(self, choice: Mapping[str, int]) -> torch.Tensor:
        """Each token's loss increase over the dense model (their mean is the joint loss)."""
        return self.of_plan({name: self.knap[name][i].config for name, i in choice.items()})

    def of_plan(self, plan: Mapping[str, MethodConfig | None]) -> torch.Tensor:
        """The same for a plan of any configs (None: the site stays dense)."""
        built = {}
        for name, config in plan.items():
            if config is None:
                continue
            if (name, config) not in self.built:
                self.built[(name, config)] = build_site(self.model, self.by_name[name], config, self.freqs, self.stats)
            built[name] = self.built[(name, config)]
        return (self.replay.token_losses(self.by_name, built) - self.replay.dense_tokens).double()

    def mean(self, choice: Mapping[str, int]) -> float:
        return float(self(choice).mean())


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="refine", unit="plan", disable=not enabled, leave=False)
