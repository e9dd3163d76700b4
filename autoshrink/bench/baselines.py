"""Single-method baselines: one method applied uniformly to every site of a scope, its size knob
set so that the whole model just meets a byte limit (BENCHMARK.md, "What is compared").

"Uniformly" means every site gets the same compression ratio target: site i may store
s * dense_bytes_i, and s is the largest share (found by bisection) at which the whole model,
the dense parts included, fits. Sites the method cannot take (a vocabulary method on an LSTM
matrix) and sites outside the scope stay dense.
"""
from __future__ import annotations

from autoshrink.budget import largest_within
from autoshrink.errors import UserError
from autoshrink.methods import MethodConfig
from autoshrink.plan import Plan, plan_stored_bytes

BISECTIONS = 40


def _takes(cfg: MethodConfig, site) -> bool:
    try:
        cfg.check_site(site)
        return True
    except UserError:
        return False


def uniform_plan(base: MethodConfig, sites: list, max_bytes: int, freqs=None, model_bytes: int | None = None,
                 roles: set[str] | None = None) -> Plan | None:
    """The plan giving `base` (its size knob fitted per site) to every site of `roles` (all when
    None) that takes it, the largest such plan within `max_bytes` for the whole model; None when
    even the smallest setting does not fit."""
    targets = [s for s in sites if s.tied_with is None and (roles is None or s.role in roles) and _takes(base, s)]
    if not targets:
        return None

    def plan_at(share: float) -> Plan | None:
        plan = {}
        for site in targets:
            cfg = largest_within(site, base, int(share * site.dense_bytes), freqs)
            if cfg is None:
                return None
            plan[site.name] = cfg
        return plan

    def fits(share: float) -> Plan | None:
        plan = plan_at(share)
        return plan if plan is not None and plan_stored_bytes(sites, plan, freqs, model_bytes) <= max_bytes else None

    lo, hi = 0.0, 1.0  # share of each site's dense bytes; beyond 1 compression would not pay
    best = fits(hi)
    if best is not None:
        return best
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        plan = fits(mid)
        if plan is not None:
            lo, best = mid, plan
        else:
            hi = mid
    return best
