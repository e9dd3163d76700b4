"""Repair of an over-budget plan, as AMC and HAQ clip their actions: shrink the largest site
along its size knob, then its bits, then switch it to the space's smallest setting."""

from __future__ import annotations

from autoshrink.errors import UserError
from autoshrink.methods import FLOAT_BITS
from autoshrink.plan.bytes import ModelFile, method_bytes, plan_stored_bytes

MIN_REPAIR_BITS = (
    4  # repair does not push a method's storage below 4 bits (quality falls off, docs/methods.md, Quantisation)
)


def _lower_bits(config, floor: int = MIN_REPAIR_BITS):
    """The next lower storage bit width at or above `floor`, or None."""
    lower = [b for b in FLOAT_BITS if floor <= b < config.bits]
    try:
        return config.replace(bits=max(lower)) if lower else None
    except UserError:
        return None


def shrink(config):
    """One step smaller: along the size knob (x0.8, or the next lower bit width), then, once
    that is at its end, by storing the method's tensors with fewer bits. None at the end."""
    knob = type(config).size_knob
    if knob == "bits":  # bits is the method itself (quant): every level is allowed
        return _lower_bits(config, floor=2)
    if knob is None:
        return _lower_bits(config)
    value = getattr(config, knob)
    if isinstance(value, int):
        new = min(value - 1, int(value * 0.8)) if value > 1 else None
    else:
        new = value * 0.8 if value > 1e-5 else None
    try:
        return config.replace(**{knob: new}) if new is not None else _lower_bits(config)
    except UserError:
        return _lower_bits(config)


def repair(
    plan: dict,
    sites: list,
    max_bytes: int | None,
    freqs=None,
    fits=None,
    fallback: dict | None = None,
    model_file: ModelFile | None = None,
    step=None,
) -> dict | None:
    """Shrink a plan until it fits `max_bytes` (or until `fits(plan)`, for latency budgets), as
    AMC and HAQ clip their actions: the largest compressed site shrinks first, by `step(site,
    config)` (default: `shrink`; a search passes its space's, so a repaired plan keeps to the
    space's values); when no planned site can shrink further, the largest remaining site switches
    to its `fallback` (the space's smallest setting for it). With the fallbacks of a feasible
    space this always ends feasible; None only when even they cannot make it fit."""
    step = step or (lambda site, config: shrink(config))
    plan = below_dense(plan, sites, freqs, step, fallback or {})
    if fits is None:

        def fits(p):
            return plan_stored_bytes(sites, p, freqs, model_file) <= max_bytes

    by_name = {s.name: s for s in sites}
    fallback = fallback or {}

    def site_bytes(name: str) -> int:
        return method_bytes(by_name[name], plan[name], freqs) if name in plan else by_name[name].dense_bytes

    plan = dict(plan)
    stuck: set[str] = set()
    switched: set[str] = set()
    while not fits(plan):
        movable = [n for n in plan if n not in stuck]
        if movable:
            name = max(movable, key=site_bytes)
            smaller = step(by_name[name], plan[name])
            try:
                if smaller is None:
                    raise UserError("at its smallest")
                smaller.check_site(by_name[name])
                plan[name] = smaller
            except UserError:
                stuck.add(name)
            continue
        candidates = [n for n in fallback if n not in switched and plan.get(n) != fallback[n]]
        if not candidates:
            return None
        name = max(candidates, key=site_bytes)
        plan[name] = fallback[name]
        switched.add(name)
        stuck.discard(name)
    return plan


def _shrinks(config, site, freqs) -> bool:
    try:
        config.check_shrinks(site, freqs)
        return True
    except UserError:
        return False


def below_dense(plan: dict, sites: list, freqs=None, step=None, fallback: dict | None = None) -> dict:
    """Every entry stepped down until it stores less than its dense site (compress refuses one
    that does not): by `step`, else the site's `fallback`, else the site stays dense."""
    step = step or (lambda site, config: shrink(config))
    by_name = {s.name: s for s in sites}
    out = {}
    for name, config in plan.items():
        site = by_name.get(name)
        if site is None:
            out[name] = config
            continue
        while config is not None and not _shrinks(config, site, freqs):
            config = step(site, config)
        if config is None and fallback and name in fallback and _shrinks(fallback[name], site, freqs):
            config = fallback[name]
        if config is not None:
            out[name] = config
    return out
