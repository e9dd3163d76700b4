"""Option levels: the sizes of one method on one site that the profile measures.

A base config (low-rank at 4 bits, quantisation, GroupReduce with 8 blocks, ...) becomes ~8-12
configs whose stored bytes step geometrically from a small fraction of the site's dense bytes to
just under them; each is the largest setting of the method's size knob within its byte target
(`largest_within`), so levels are as large as their targets allow. Levels with equal bytes are one
level (a rank clipped at min(m, n) does not grow any more), written with the smallest knob value
that gives those bytes, so a plan reads `rank=256`, not `rank=16777216`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from autoshrink.plan.fit import largest_within
from autoshrink.errors import UserError
from autoshrink.methods import MethodConfig
from autoshrink.plan import method_bytes
from autoshrink.sites import Site

LEVELS = 10
SMALLEST_FRACTION = 0.01  # of the site's dense bytes: at 25x the whole model keeps 4%
LARGEST_FRACTION = 0.95  # "just under dense": a level at dense bytes would be no compression


def _bytes(site: Site, config: MethodConfig, freqs: torch.Tensor | None) -> int:
    return method_bytes(site, config, freqs)


def _smallest_equal(site: Site, config: MethodConfig, freqs: torch.Tensor | None) -> MethodConfig:
    """The config with the smallest integer size knob that stores the same bytes as `config`."""
    knob = type(config).size_knob
    value = getattr(config, knob) if knob else None
    if knob is None or knob == "bits" or not isinstance(value, int) or isinstance(value, bool):
        return config
    target = _bytes(site, config, freqs)
    lo, hi = 1, value  # bytes(hi) == target; bytes grow with the knob
    while lo < hi:
        mid = (lo + hi) // 2
        if _bytes(site, config.replace(**{knob: mid}), freqs) >= target:
            hi = mid
        else:
            lo = mid + 1
    return config.replace(**{knob: lo})


def takes(config: MethodConfig, site: Site) -> bool:
    """Whether the method applies to the site at all (role and shape)."""
    try:
        config.check_site(site)
        return True
    except UserError:
        return False


def site_levels(
    site: Site,
    base: MethodConfig,
    levels: int = LEVELS,
    freqs: torch.Tensor | None = None,
    smallest: float = SMALLEST_FRACTION,
    largest: float = LARGEST_FRACTION,
    cap: int | None = None,
) -> list[MethodConfig]:
    """Up to `levels` configs of `base` on `site`, geometric in bytes from `smallest` to `largest`
    times the site's dense bytes (or to `cap` bytes, if lower: no larger option can be part of a
    plan within the budget), smallest first, without duplicates (empty if the method does not
    apply or cannot get under the largest target)."""
    if levels < 1 or not 0 < smallest <= largest:
        raise UserError(f"levels need levels >= 1 and 0 < smallest <= largest, got {levels}, {smallest}, {largest}")
    if not takes(base, site):
        return []
    dense = site.dense_bytes
    if cap is not None:
        largest = min(largest, cap / dense)
        smallest = min(smallest, largest)
        if largest <= 0:
            return []
    smallest = _first_reachable(site, base, smallest, largest, freqs)
    if smallest is None:
        return []
    steps = [smallest * (largest / smallest) ** (i / max(1, levels - 1)) for i in range(levels)]
    found: dict[int, MethodConfig] = {}
    for fraction in steps:
        config = largest_within(site, base, int(fraction * dense), freqs)
        if config is None or not takes(config, site):
            continue
        nbytes = _bytes(site, config, freqs)
        if nbytes < dense and nbytes not in found:
            found[nbytes] = _smallest_equal(site, config, freqs)
    return [found[b] for b in sorted(found)]


def _first_reachable(
    site: Site, base: MethodConfig, smallest: float, largest: float, freqs: torch.Tensor | None
) -> float | None:
    """`smallest`, or where the method's smallest setting is larger than that share of the site's
    dense bytes (per-row scales, a fixed core), about the share it does take: the levels then start
    at the method's floor instead of spending their first steps below it. None: not even `largest`."""
    dense = site.dense_bytes
    if largest_within(site, base, int(smallest * dense), freqs) is not None:
        return smallest
    lo, hi = int(smallest * dense), int(largest * dense)
    if largest_within(site, base, hi, freqs) is None:
        return None
    while hi - lo > max(1, hi // 1000):  # the least bytes a setting fits in, to 0.1%
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if largest_within(site, base, mid, freqs) is None else (lo, mid)
    return hi / dense


def site_options(
    sites: Sequence[Site],
    bases: Sequence[MethodConfig] | Mapping[str, Sequence[MethodConfig]],
    levels: int = LEVELS,
    freqs: torch.Tensor | None = None,
    caps: Mapping[str, int] | None = None,
    smallest: float = SMALLEST_FRACTION,
) -> dict[str, list[MethodConfig]]:
    """{site name: its levels under every base config that applies to it}, for the sites a plan
    can name (a tied partner is its owner's). `bases` is one list for every site, or a list per
    site role ("embedding", "softmax", "recurrent", ...); `caps` bounds each site's levels in bytes;
    `smallest` is the smallest level's share of a site's dense bytes."""
    options: dict[str, list[MethodConfig]] = {}
    for site in sites:
        if site.tied_with is not None:
            continue
        site_bases = bases.get(site.role, ()) if isinstance(bases, Mapping) else bases
        configs: list[MethodConfig] = []
        for base in site_bases:
            cap = caps.get(site.name) if caps is not None else None
            configs += [c for c in site_levels(site, base, levels, freqs, smallest, cap=cap) if c not in configs]
        options[site.name] = configs
    return options


ZOOM = 3  # levels added in each gap next to a chosen level (a 2-4x finer grid there)


def same_base(a: MethodConfig, b: MethodConfig) -> bool:
    """Whether two configs differ at most in their method's size knob."""
    knob = type(a).size_knob
    if type(a) is not type(b) or knob is None:
        return a == b
    return a.replace(**{knob: getattr(b, knob)}) == b


def zoom_levels(
    site: Site,
    chosen: MethodConfig,
    levels: Sequence[MethodConfig],
    per_gap: int = ZOOM,
    freqs: torch.Tensor | None = None,
) -> list[MethodConfig]:
    """Configs of `chosen`'s base between it and its neighbouring levels (in bytes) among `levels`,
    `per_gap` byte targets evenly spaced in each gap, each the largest setting within its target:
    a finer grid where the knapsack's choice lies, so that a sensitive site is not held to a
    level a whole geometric step below what the budget could give it. Empty for a method whose
    size knob is its bits (their levels are all there are)."""
    if type(chosen).size_knob in (None, "bits"):
        return []
    sizes = sorted({_bytes(site, c, freqs) for c in levels if same_base(c, chosen)} | {_bytes(site, chosen, freqs)})
    at = sizes.index(_bytes(site, chosen, freqs))
    gaps = [(sizes[i], sizes[i + 1]) for i in (at - 1, at) if 0 <= i and i + 1 < len(sizes)]
    found: dict[int, MethodConfig] = {}
    for lo, hi in gaps:
        for k in range(1, per_gap + 1):
            config = largest_within(site, chosen, lo + (hi - lo) * k // (per_gap + 1), freqs)
            if config is None or not takes(config, site):
                continue
            nbytes = _bytes(site, config, freqs)
            if lo < nbytes < hi and nbytes not in found:
                found[nbytes] = _smallest_equal(site, config, freqs)
    return [found[b] for b in sorted(found)]
