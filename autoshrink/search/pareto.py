"""Pareto maths on (size, perplexity) points, pure numpy: kept apart from tables and plots."""

from __future__ import annotations

import numpy as np


def pareto_mask(points: np.ndarray) -> np.ndarray:
    """True for points no other point dominates (all objectives minimised)."""
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return np.zeros(0, dtype=bool)
    mask = np.ones(len(pts), dtype=bool)
    for i, p in enumerate(pts):
        dominated_by = np.all(pts <= p, axis=1) & np.any(pts < p, axis=1)
        mask[i] = not dominated_by.any()
    return mask


def hypervolume_2d(points: np.ndarray, reference: tuple[float, float]) -> float:
    """Area dominated by the points and bounded by `reference` (both objectives minimised)."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    pts = pts[np.all(pts < np.asarray(reference), axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[pareto_mask(pts)]
    pts = pts[np.argsort(pts[:, 0])]
    area, prev_y = 0.0, reference[1]
    for x, y in pts:
        area += (reference[0] - x) * (prev_y - y)
        prev_y = y
    return float(area)
