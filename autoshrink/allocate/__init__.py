"""Allocation of bytes between sites: a per-site profile of cheap measurements, a knapsack over
it, and joint refinement of the chosen plans (docs/how-it-works.md)."""
