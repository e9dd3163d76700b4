"""The search's cheap steps, before any trial trains (docs/how-it-works.md): each site's options
are profiled alone (bytes and loss increase, data-aware builds, no training), a knapsack spends
the budget's bytes where they cost least loss, and the best candidates are refined jointly
(allocate/). The plans it finds are the search's first trials; the profile is `profile.csv` in the
run folder, reused on resume.

The profile takes its options from the space: for each method the space offers a site (but those
a one-shot proxy misjudges, pitfall 12: `MethodConfig.judged_after_training`), its storage widths
among PROFILE_BITS, each storage layout the space offers (PROFILE_CHOICES: every choice), the
knobs of PROFILE_SPANS at their default and their range's ends, its other knobs at their defaults
brought into the space, and its size knob
at up to LEVELS sizes, each brought into the space too, so every allocated plan is a plan the
sampler could draw.
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from autoshrink.allocate import Allocation, allocate
from autoshrink.allocate.knapsack import Option
from autoshrink.allocate.pipeline import (
    SLICE_TOKENS,
    Allocated,
    NoPlanFits,
    capped_options,
    fixed_bytes,
    knapsack_options,
)
from autoshrink.allocate.profile import profile
from autoshrink.errors import UserError
from autoshrink.methods import MethodConfig, config_class, config_from_dict, method_names
from autoshrink.models.discover import in_place_target
from autoshrink.plan import ModelFile, Plan, plan_stored_bytes, untrained_perplexity
from autoshrink.search import run_folder
from autoshrink.search.run_folder import ALLOCATION, PROFILE
from autoshrink.search.space import DENSE, SearchSpace
from autoshrink.sites import ROLES, Site

# Storage widths profiled, each moved to the nearest the space offers (so a space without 3 bits
# profiles 4 and 8 only): 4 bits with larger ranks won at 25x (results/allocate.md), and 3 bits wins
# on the vocabulary matrices at small sizes (results/storage_widths.md).
PROFILE_BITS = (3, 4, 8)
# Knobs whose every choice the profile measures: which layout stores a site's U best differs from
# site to site (results/u_groups.md: rnn.0.ih gains from a scale per gate, rnn.0.hh loses).
PROFILE_CHOICES = ("u_groups", "gates")
# Knobs the profile measures at their default and both ends of the space's range: GroupReduce's
# block count sets its floor (the frequency-scaled ranks keep the head block dense; at 4 blocks
# that is a quarter of the vocabulary), so at the default alone a vocabulary site offered it
# one level and the knapsack never weighed it (vocab-6.6x, 2026-12-01).
PROFILE_SPANS = ("blocks",)
LEVELS = 8  # size levels per method and width on each site
LADDER = (0.9, 0.8, 0.7)  # fractions of the limit whose knapsack plans are trials too (front seeds)
HEDGES = 2  # allocated plans without one of the best plan's methods that are trials too (allocate/pipeline.py)


def profile_bases(space: SearchSpace, role: str) -> list[MethodConfig]:
    """Each method the space offers `role` that a profile can judge, at each profiled width."""
    bases = []
    for method, knobs in space.roles.get(role, {}).items():
        if method == DENSE:
            continue
        cls = config_class(method)
        if cls.judged_after_training:
            continue
        defaults = cls()
        every = {name: knobs[name].choices for name in PROFILE_CHOICES if name in knobs and knobs[name].choices}
        every |= {
            name: tuple(
                sorted({knobs[name].nearest(getattr(defaults, name)), knobs[name].smallest, knobs[name].largest})
            )
            for name in PROFILE_SPANS
            if name in knobs and knobs[name].searched
        }
        fixed = {
            name: knob.nearest(getattr(defaults, name))
            for name, knob in knobs.items()
            if name not in (cls.size_knob, "bits", *every)
        }
        widths = (
            sorted({knobs["bits"].nearest(b) for b in PROFILE_BITS})
            if "bits" in knobs and cls.size_knob != "bits"
            else [None]
        )
        for bits in widths:
            for combo in itertools.product(*every.values()):
                try:
                    bases.append(
                        cls(**fixed, **dict(zip(every, combo)), **({"bits": bits} if bits is not None else {}))
                    )
                except UserError:
                    continue
    return bases


def into_space(space: SearchSpace, site: Site, config: MethodConfig) -> MethodConfig | None:
    """`config` moved onto the space's values (SearchSpace.within), None if that is not valid for the site."""
    try:
        return space.within(site, config)
    except UserError:
        return None


def space_options(
    space: SearchSpace, sites: list[Site], capacity: int, model_file: ModelFile, freqs: torch.Tensor | None
) -> dict[str, list[MethodConfig]]:
    """{site: the configs to profile}: levels of every base within what the site can hold, in the space."""
    bases = {role: profile_bases(space, role) for role in ROLES}
    by_name = {s.name: s for s in sites}
    options = {}
    for name, configs in capped_options(sites, bases, capacity, model_file, freqs, LEVELS).items():
        moved = [m for m in (into_space(space, by_name[name], c) for c in configs) if m is not None]
        options[name] = list(dict.fromkeys(moved))  # several levels may land on one space value
    return options


def allocation(ctx, folder: Path, log: Callable[[str], None], strict: bool = False) -> Allocation | None:
    """The search's cheap steps after calibration: the profile (`profile.csv`, resumed), the
    knapsack for the byte limit and a ladder below it, and the joint refinement, on validation
    tokens after the trials' slice, so a trial's validation is not the tokens its plan was chosen
    on. Written to `allocation.json` (run_folder.write_allocation). None where nothing can be
    allocated: a latency budget, sites compressed in place, no option the profile can judge, or
    (unless `strict`) no plan of the profiled options within the limit: the search then starts from
    the uniform plans and the sampler."""
    if ctx.max_bytes is None:
        return None
    in_place = _in_place(ctx)
    if in_place:  # the profile's replay swaps modules on a shallow copy; a parametrized weight would leak
        log(
            f"allocation skipped: {len(in_place)} site(s) are compressed in place inside torch modules "
            f"({in_place[0]}, ...); the search starts from the uniform plans and the sampler"
        )
        return None
    start = time.perf_counter()
    held_out = _held_out(ctx)
    options = _options(ctx)
    count_options = sum(len(v) for v in options.values())
    if not count_options:
        return None
    recorded = _recorded(ctx, folder, options)
    if recorded is not None:
        log(f"allocation: read from {folder / ALLOCATION} (written for this budget and validation slice)")
        return recorded
    training = f"{ctx.profile_finetune} steps of training on the site first" if ctx.profile_finetune else "no training"
    log(f"profile: {count_options} options of {len(options)} sites, each alone, {training} -> {folder / PROFILE}")
    try:
        result = allocate(
            ctx.model,
            held_out,
            options,
            ctx.max_bytes,
            freqs=ctx.freqs,
            stats=ctx.stats,
            profile_path=folder / PROFILE,
            seed=ctx.settings.seed,
            progress=True,
            may_stay_dense=_may_stay_dense(ctx, options),
            map_options=ctx.map_options,
            admit=_admit(ctx),
            **_finetune(ctx),
        )
    except NoPlanFits as e:
        if strict:
            raise
        log(f"allocation: {e}; the search starts from the uniform plans and the sampler")
        return None
    tokens = min(SLICE_TOKENS, held_out.numel())
    run_folder.write_allocation(folder, result, ctx.sites, tokens, _held_out_start(ctx), ctx.profile_finetune)
    best = result.best
    dense_ppl = math.exp(result.dense_loss)
    ppl = f"{math.exp(result.dense_loss + best.joint_loss):.2f}" if best.joint_loss is not None else "-"
    log(
        f"allocation: {best.bytes:,} bytes, ppl {ppl} on {tokens:,} held-out valid tokens before "
        f"training (dense {dense_ppl:.2f}), {time.perf_counter() - start:.0f} s -> {folder / ALLOCATION}"
    )
    for entry in [*result.plans, *result.ladder.values(), *result.hedges, result.toward_uniform]:
        if entry is not None:
            assert plan_stored_bytes(ctx.sites, entry.plan, ctx.freqs, ctx.model_file) <= ctx.max_bytes, entry.source
    return result


def allocated_plans(result: Allocation | None, count: int, log: Callable[[str], None]) -> list[tuple[str, Plan]]:
    """Up to `count` (source, plan) pairs for the first trials from an `allocation`: the refined
    allocation, its sizes moved halfway to a uniform plan's, then its best HEDGES (the best plan
    without one of its methods), then the knapsack's plans for fractions of the limit."""
    if result is None or count < 1:
        return []
    plans: list[tuple[str, Plan]] = [(f"allocation ({result.best.source})", result.best.plan)]
    if result.toward_uniform is not None and result.toward_uniform.plan != result.best.plan:
        plans.append((f"allocation {result.toward_uniform.source}", result.toward_uniform.plan))
    first = len(plans)
    for entry in result.hedges:
        if len(plans) - first < HEDGES and all(entry.plan != p for _, p in plans):
            plans.append((f"allocation hedge ({entry.source})", entry.plan))
    for fraction in LADDER:
        entry = result.ladder.get(fraction)
        if entry is not None and all(entry.plan != p for _, p in plans):
            plans.append((f"knapsack at {fraction:g} of the limit", entry.plan))
    plans = plans[:count]
    log(f"{len(plans)} allocated plan(s) are the first trials")
    return plans


def untrained_ppl(ctx) -> Callable[[Plan], float]:
    """A plan's perplexity before training (data-aware build where the search calibrated), on the
    allocation's held-out slice:
    how the warm start picks each uniform control's storage width."""
    tokens = _held_out(ctx)[:SLICE_TOKENS]
    return lambda plan: untrained_perplexity(ctx.model, plan, tokens, ctx.freqs, ctx.stats, ctx.settings.seed)


def profile_options(
    ctx, folder: Path, table: pd.DataFrame | None = None
) -> tuple[dict[str, list[Option]], float] | None:
    """The knapsack's options from the run's profile and the bytes the sites may hold: what the
    profile-guided sampler plans with. `table`: the profile this search's allocation just measured;
    without it (a resumed search) it is read back from PROFILE, anything missing measured. None where
    a search has no profile (no byte budget, sites compressed in place)."""
    if ctx.max_bytes is None or _in_place(ctx):
        return None
    options = _options(ctx)
    if not any(options.values()):
        return None
    if table is None:  # read back, with the sizes the allocation's zoom added
        table = _profile_table(ctx, folder, _merged(options, _zoomed(run_folder.read_allocation(folder))))
    knap = knapsack_options(table, ctx.sites, ctx.model_file, ctx.freqs, _may_stay_dense(ctx, options))
    return knap, float(ctx.max_bytes - fixed_bytes(ctx.sites, ctx.model_file))


def _in_place(ctx) -> list[str]:
    return [s.name for s in ctx.sites if in_place_target(ctx.model, s.name) is not None]


def _held_out(ctx) -> torch.Tensor:
    """Validation tokens after the trials' slice: plans are chosen on tokens no trial is judged on."""
    return ctx.data.valid.reshape(-1)[_held_out_start(ctx) :]


def _held_out_start(ctx) -> int:
    return held_out_start(ctx.data.valid.numel(), ctx.settings.eval_tokens)


def held_out_start(valid_tokens: int, eval_tokens: int | None) -> int:
    """Where the allocation's slice begins: after the `eval_tokens` trials are judged on, unless
    fewer than 1,000 validation tokens would be left (a small corpus: then from the start)."""
    start = eval_tokens or 0
    return start if valid_tokens - start >= 1000 else 0


def _profile_table(ctx, folder: Path, options: dict[str, list[MethodConfig]]) -> pd.DataFrame:
    """The profile rows of `options` for this model, slice and calibration: read back from PROFILE
    (or the shared cache), anything missing measured."""
    return profile(
        ctx.model,
        _held_out(ctx)[:SLICE_TOKENS],
        options,
        freqs=ctx.freqs,
        stats=ctx.stats,
        path=folder / PROFILE,
        map_options=ctx.map_options,
        **_finetune(ctx),
    )


def _finetune(ctx) -> dict:
    """The profile's per-site fine-tune: `ctx.profile_finetune` steps for every method (none: no arguments)."""
    if not ctx.profile_finetune:
        return {}
    return {"finetune_steps": ctx.profile_finetune, "train_ids": ctx.data.train, "finetune_methods": method_names()}


def _recorded(ctx, folder: Path, options: dict[str, list[MethodConfig]]) -> Allocation | None:
    """The allocation already in the folder (`autoshrink profile`, or a search stopped after its
    allocation), when it was made for this byte limit and validation slice: the knapsack and the
    joint refinement are not run again. A resume has already refused another model, data, space
    or calibration (run.json)."""
    info = run_folder.read_allocation(folder)
    if (
        info is None
        or "hedges" not in info  # written before hedges and zoom: allocated again (the profile rows are kept)
        or "toward_uniform" not in info  # written before the halfway plan: the same
        or info.get("limit") != ctx.max_bytes
        or info.get("held_out_start") != _held_out_start(ctx)
        or info.get("profile_finetune", 0) != ctx.profile_finetune
    ):
        return None
    zoomed = _zoomed(info)
    return Allocation(
        plans=[Allocated.from_dict(info["best"])],
        ladder={float(f): Allocated.from_dict(a) if a else None for f, a in info["ladder"].items()},
        table=_profile_table(ctx, folder, _merged(options, zoomed)),
        dense_loss=info["dense_loss"],
        limit=info["limit"],
        seconds=info.get("seconds", {}),
        hedges=[Allocated.from_dict(a) for a in info.get("hedges", [])],
        zoomed=zoomed,
        toward_uniform=Allocated.from_dict(info["toward_uniform"]) if info.get("toward_uniform") else None,
    )


def _zoomed(info: dict | None) -> dict[str, list[MethodConfig]]:
    """The sizes the allocation's zoom added to the space's options (allocation.json)."""
    return {site: [config_from_dict(c) for c in configs] for site, configs in (info or {}).get("zoomed", {}).items()}


def _merged(
    options: dict[str, list[MethodConfig]], extra: dict[str, list[MethodConfig]]
) -> dict[str, list[MethodConfig]]:
    return {site: configs + [c for c in extra.get(site, []) if c not in configs] for site, configs in options.items()}


def _options(ctx) -> dict[str, list[MethodConfig]]:
    fixed = fixed_bytes(ctx.sites, ctx.model_file)
    return space_options(ctx.space, ctx.sites, ctx.max_bytes - fixed, ctx.model_file, ctx.freqs)


def _admit(ctx) -> Callable[[str, MethodConfig], MethodConfig | None]:
    """A zoomed size as the space can plan it (its knobs moved onto the space's values)."""
    by_name = {s.name: s for s in ctx.sites}
    return lambda name, config: into_space(ctx.space, by_name[name], config)


def _may_stay_dense(ctx, options: dict) -> Callable[[str], bool]:
    by_name = {s.name: s for s in ctx.sites}
    return lambda name: not options.get(name) or DENSE in ctx.space.methods_for(by_name[name])
