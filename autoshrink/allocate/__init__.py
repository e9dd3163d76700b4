"""Allocation: which option each site gets within a budget, chosen from a per-site profile
(docs/how-it-works.md), without training.

    levels    a method's size levels on a site (geometric in bytes)
    replay    the loss with some sites compressed, recomputed from the first one onward
    profile   each site under each option alone: bytes and loss increase (profile.csv)
    knapsack  multiple-choice knapsack over the profile, for a limit and a ladder of limits
    refine    joint evaluation of the best candidates and byte-keeping moves (EvoPress-style)
    pipeline  allocate(): all of it, one call

(`profile` is imported from its module: a package attribute of that name would hide the module.)
"""

from autoshrink.allocate.knapsack import Option, Selection, solve, solve_ladder
from autoshrink.allocate.levels import site_levels, site_options
from autoshrink.allocate.pipeline import Allocated, Allocation, allocate
from autoshrink.allocate.replay import Replay

__all__ = [
    "Allocated",
    "Allocation",
    "Option",
    "Replay",
    "Selection",
    "allocate",
    "site_levels",
    "site_options",
    "solve",
    "solve_ladder",
]
