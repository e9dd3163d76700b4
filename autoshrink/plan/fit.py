"""Fitting a method's size knob to a byte target: one site (largest_within) or every site at
once, uniformly (uniform_plan: the benchmark's single-method baselines and the search's warm start),
and the storage width at which such a uniform plan does best (best_width)."""

from __future__ import annotations

from typing import Callable, Iterable

from autoshrink.errors import UserError
from autoshrink.methods import FLOAT_BITS
from autoshrink.plan.bytes import ModelFile, method_bytes, plan_stored_bytes


def _bytes_of(site, config, freqs) -> int:
    return method_bytes(site, config, freqs)


def largest_within(site, config, max_bytes: int, freqs=None):
    """The config with the largest `size_knob` whose method bytes fit `max_bytes` (other knobs
    kept), or None if even the smallest setting does not fit. Bytes grow with the knob, so this
    is a bisection: ints over [1, current or larger], floats over (0, 1], bits over their levels.
    """
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


def uniform_plan(
    base,
    sites: list,
    max_bytes: int,
    freqs=None,
    model_file: ModelFile | None = None,
    roles: set[str] | None = None,
    per_site: Callable | None = None,
) -> dict | None:
    """The plan giving `base` (its size knob fitted per site) to every site of `roles` (all when
    None) that takes it, the largest such plan within `max_bytes` for the whole model; None when
    even the smallest setting does not fit. `per_site(site, base)`: the config a site starts from
    instead of `base` (a search space's per-role knobs), its size knob then fitted the same way."""
    targets = [s for s in sites if s.tied_with is None and (roles is None or s.role in roles) and _takes(base, s)]
    if not targets:
        return None
    starts = {s.name: base if per_site is None else per_site(s, base) for s in targets}

    def plan_at(share: float) -> dict | None:
        plan = {}
        for site in targets:
            cfg = largest_within(site, starts[site.name], int(share * site.dense_bytes), freqs)
            if cfg is None:
                return None
            plan[site.name] = cfg
        return plan

    return _largest_share(plan_at, sites, max_bytes, freqs, model_file)


def smallest_setting(site, config, freqs=None):
    """`config` with its size knob at the fewest bytes it may take (None: the knob's least value
    the method accepts for the site; `config` itself when it has no size knob)."""
    knob = type(config).size_knob
    if knob is None:
        return config
    current = getattr(config, knob)
    values = FLOAT_BITS if knob == "bits" else [1] if isinstance(current, int) else [0.0]
    valid = []
    for value in values:
        try:
            valid.append((_bytes_of(site, config.replace(**{knob: value}), freqs), config.replace(**{knob: value})))
        except UserError:
            continue
    return min(valid, key=lambda pair: pair[0])[1] if valid else config


def toward_uniform(
    plan: dict,
    weight: float,
    sites: list,
    max_bytes: int,
    freqs=None,
    model_file: ModelFile | None = None,
    admit: Callable | None = None,
) -> dict | None:
    """`plan` with each site's size moved `weight` of the way to a uniform plan's: a site's method
    bytes aim at (1 - weight) x its bytes under `plan` + weight x s x its dense bytes, s the largest
    share at which the whole model fits `max_bytes` (its method and other knobs kept, its size knob
    fitted as uniform_plan fits it; sites `plan` leaves dense stay dense; a site whose knob cannot go
    down to its aim, 2-bit quantisation, takes its smallest setting, so plans still grow with the
    share). `admit(site name, config)`: the config as the caller may plan it (a search moves it into
    its space; None: the site keeps its own), applied before the plan is measured against the limit.
    None when no share fits."""
    by_name = {s.name: s for s in sites}
    own = {name: _bytes_of(by_name[name], cfg, freqs) for name, cfg in plan.items()}

    def plan_at(share: float) -> dict | None:
        moved = {}
        for name, cfg in plan.items():
            site = by_name[name]
            target = (1 - weight) * own[name] + weight * share * site.dense_bytes
            fitted = largest_within(site, cfg, int(target), freqs) or smallest_setting(site, cfg, freqs)
            moved[name] = (admit(name, fitted) if admit is not None else fitted) or cfg
        return moved

    return _largest_share(plan_at, sites, max_bytes, freqs, model_file)


def _largest_share(
    plan_at: Callable[[float], dict | None], sites: list, max_bytes: int, freqs, model_file: ModelFile | None
) -> dict | None:
    """plan_at(share) for the largest share in [0, 1] (bisection) whose plan exists and fits
    `max_bytes`; None when none does. Plans grow with the share."""

    def verdict(share: float) -> tuple[int, dict | None]:
        """-1: a site's smallest setting is above its share (go up); 1: the model is too big
        (go down); 0: it fits."""
        plan = plan_at(share)
        if plan is None:
            return -1, None
        return (1, None) if plan_stored_bytes(sites, plan, freqs, model_file) > max_bytes else (0, plan)

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


def best_width(
    base,
    widths: Iterable[int],
    sites: list,
    max_bytes: int,
    score: Callable[[dict], float],
    freqs=None,
    model_file: ModelFile | None = None,
    roles: set[str] | None = None,
    per_site: Callable | None = None,
) -> tuple[dict | None, list[tuple[int, float, dict]]]:
    """`base` fitted uniformly (uniform_plan) at each storage width of `widths`, and the plan
    whose `score` (lower is better: a loss before training) is lowest; with every (bits, score,
    plan) tried. Fewer bits buy a larger size knob, so which width is best depends on the method
    and the budget (4-bit low-rank beat 8-bit at 25x-100x of the reference LSTM). None when no
    width reaches `max_bytes`."""
    tried = []
    for bits in widths:
        plan = uniform_plan(base.replace(bits=bits), sites, max_bytes, freqs, model_file, roles, per_site)
        if plan is not None:
            tried.append((bits, score(plan), plan))
    best = min(tried, key=lambda t: t[1], default=None)
    return (None if best is None else best[2]), tried
