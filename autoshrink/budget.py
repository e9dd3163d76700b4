"""Budgets: `25x` (whole-model ratio), `1.5MB`/`800KB`/`2MiB` (stored bytes), `4ms` (latency).

Parsing only here; feasibility and repair of plans come with the search.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from autoshrink.errors import UserError

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_TIME = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(x|b|kb|mb|gb|kib|mib|gib|us|ms|s)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    kind: str  # "ratio" | "bytes" | "latency"
    value: float  # ratio, bytes, or milliseconds
    text: str

    def max_bytes(self, dense_bytes: int) -> int | None:
        """The largest stored size that meets a ratio or size budget (None for latency)."""
        if self.kind == "ratio":
            return int(dense_bytes // self.value)
        if self.kind == "bytes":
            return int(self.value)
        return None

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "", self.text)


def parse_budget(text: str) -> Budget:
    """Parse a budget string; anything else is a UserError that shows the value."""
    m = _BUDGET.match(str(text))
    if not m:
        raise UserError(f"budget {text!r} is not understood: use a ratio such as 25x, a size such as 1.5MB, "
                        "800KB or 2MiB, or a latency such as 4ms")
    number, unit = float(m.group(1)), m.group(2).lower()
    if number <= 0:
        raise UserError(f"budget {text!r} must be positive")
    if unit == "x":
        if number <= 1:
            raise UserError(f"budget {text!r}: a compression ratio must be above 1x")
        return Budget("ratio", number, text.strip())
    if unit in _TIME:
        return Budget("latency", number * _TIME[unit], text.strip())
    size = number * _UNITS[unit]
    if size < 1:
        raise UserError(f"budget {text!r} is below one byte")
    return Budget("bytes", size, text.strip())


# --- fitting a method to a byte target --------------------------------------------------------
def _bytes_of(site, config, freqs) -> int:
    from autoshrink.plan import method_bytes
    return method_bytes(site, config, freqs)


def largest_within(site, config, max_bytes: int, freqs=None):
    """The config with the largest `size_knob` whose method bytes fit `max_bytes` (other knobs
    kept), or None if even the smallest setting does not fit. Bytes grow with the knob, so this
    is a bisection: ints over [1, current or larger], floats over (0, 1], bits over their levels.
    """
    from autoshrink.methods._storage import FLOAT_BITS

    knob = type(config).size_knob
    if knob is None:
        return config if _bytes_of(site, config, freqs) <= max_bytes else None

    def fits(value) -> bool:
        try:
            return _bytes_of(site, config.replace(**{knob: value}), freqs) <= max_bytes
        except UserError:
            return False

    current = getattr(config, knob)
    if knob == "bits":
        levels = [b for b in FLOAT_BITS if fits(b)]
        return config.replace(bits=max(levels)) if levels else None
    if isinstance(current, int):
        lo, hi = 1, max(1, current)
        if not fits(lo):
            return None
        while fits(hi) and hi < 2**24:
            hi *= 2
        while hi - lo > 1:  # fits(lo) and not fits(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return config.replace(**{knob: hi if fits(hi) else lo})
    lo, hi = 0.0, 1.0
    if fits(hi):
        return config.replace(**{knob: hi})
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo > 0 and fits(lo):
        return config.replace(**{knob: lo})
    return config.replace(**{knob: 0.0}) if fits(0.0) else None  # e.g. Kronecker with no doping


# --- repair and feasibility of plans -----------------------------------------------------------
MIN_REPAIR_BITS = 4  # repair does not push a method's storage below 4 bits (quality falls off, docs/methods.md, Quantisation)


def _lower_bits(config, floor: int = MIN_REPAIR_BITS):
    """The next lower storage bit width at or above `floor`, or None."""
    from autoshrink.methods._storage import FLOAT_BITS
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


def repair(plan: dict, sites: list, max_bytes: int | None, freqs=None, fits=None,
           fallback: dict | None = None, model_bytes: int | None = None) -> dict | None:
    """Shrink a plan until it fits `max_bytes` (or until `fits(plan)`, for latency budgets), as
    AMC and HAQ clip their actions: the largest compressed site shrinks first; when no planned
    site can shrink further, the largest remaining site switches to its `fallback` (the space's
    smallest setting for it). With the fallbacks of a feasible space this always ends feasible;
    None only when even they cannot make it fit."""
    from autoshrink.plan import method_bytes, plan_stored_bytes

    if fits is None:
        def fits(p):
            return plan_stored_bytes(sites, p, freqs, model_bytes) <= max_bytes
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
            smaller = shrink(plan[name])
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


def smallest_plan(space, sites: list, freqs=None) -> dict:
    """Each site's smallest setting the space allows (sites with no option stay dense)."""
    from autoshrink.plan import method_bytes

    plan = {}
    for site in sites:
        options = space.smallest_configs(site)
        if options and site.tied_with is None:
            best = min(options, key=lambda c: method_bytes(site, c, freqs))
            if method_bytes(site, best, freqs) < site.dense_bytes:
                plan[site.name] = best
    return plan


def check_feasible(budget: Budget, space, sites: list, dense_bytes: int, freqs=None,
                   model_bytes: int | None = None) -> int | None:
    """The byte limit of a ratio/size budget; a UserError if no plan of the space can meet it.
    `dense_bytes` is the fp32 size (the ratio's numerator), `model_bytes` the stored size of
    the dense model (the same for fp32 models)."""
    from autoshrink.plan import plan_stored_bytes

    limit = budget.max_bytes(dense_bytes)
    if limit is None:
        return None
    floor = plan_stored_bytes(sites, smallest_plan(space, sites, freqs), freqs, model_bytes)
    if floor > limit:
        raise UserError(f"budget {budget.text} ({limit:,} bytes) cannot be met: the smallest plan of space "
                        f"{space.source} stores {floor:,} bytes ({dense_bytes / floor:.1f}x)")
    return limit


# --- one method on every site ------------------------------------------------------------------
# "Uniformly" means every site gets the same compression target: site i may store
# s * dense_bytes_i, and s is the largest share (found by bisection) at which the whole model,
# its dense parts included, fits. Sites the method cannot take (a vocabulary method on an LSTM
# matrix) and sites outside `roles` stay dense. The benchmark's single-method baselines and the
# search's warm start both use it.
UNIFORM_BISECTIONS = 40


def _takes(cfg, site) -> bool:
    try:
        cfg.check_site(site)
        return True
    except UserError:
        return False


def uniform_plan(base, sites: list, max_bytes: int, freqs=None, model_bytes: int | None = None,
                 roles: set[str] | None = None) -> dict | None:
    """The plan giving `base` (its size knob fitted per site) to every site of `roles` (all when
    None) that takes it, the largest such plan within `max_bytes` for the whole model; None when
    even the smallest setting does not fit."""
    from autoshrink.plan import plan_stored_bytes
    targets = [s for s in sites if s.tied_with is None and (roles is None or s.role in roles) and _takes(base, s)]
    if not targets:
        return None

    def plan_at(share: float) -> dict | None:
        plan = {}
        for site in targets:
            cfg = largest_within(site, base, int(share * site.dense_bytes), freqs)
            if cfg is None:
                return None
            plan[site.name] = cfg
        return plan

    def verdict(share: float) -> tuple[int, dict | None]:
        """-1: a site's smallest setting is above its share (go up); 1: the model is too big
        (go down); 0: it fits."""
        plan = plan_at(share)
        if plan is None:
            return -1, None
        return (1, None) if plan_stored_bytes(sites, plan, freqs, model_bytes) > max_bytes else (0, plan)

    side, best = verdict(1.0)  # beyond a share of 1 compression would not pay
    if side == 0:
        return best
    lo, hi = 0.0, 1.0
    for _ in range(UNIFORM_BISECTIONS):
        mid = (lo + hi) / 2
        side, plan = verdict(mid)
        if side == 1:
            hi = mid
        else:
            lo = mid
            best = plan if side == 0 else best
    return best
