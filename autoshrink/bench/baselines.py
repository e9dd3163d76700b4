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

    def verdict(share: float) -> tuple[int, Plan | None]:
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
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        side, plan = verdict(mid)
        if side == 1:
            hi = mid
        else:
            lo = mid
            best = plan if side == 0 else best
    return best
