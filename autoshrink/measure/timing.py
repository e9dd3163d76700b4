"""Repeated wall-clock timings and their spread: what a latency or throughput figure is made of.

A single timing on a shared CPU says little (the same export measured 3.5 ms, then 6.6 ms), so
every figure autoshrink reports is a median of repeats, with its interquartile range beside it:
`Spread.describe()` -> "3.52 ms (median of 20, IQR 3.41-3.70)".
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, NamedTuple


class Spread(NamedTuple):
    median: float
    q1: float  # 25th percentile
    q3: float  # 75th percentile
    repeats: int

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        if len(values) < 2:
            v = values[0] if values else float("nan")
            return cls(v, v, v, len(values))
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q1, q3, len(values))

    def scaled(self, factor: float) -> "Spread":
        """The same spread in other units (seconds -> ms: 1e3)."""
        return Spread(self.median * factor, self.q1 * factor, self.q3 * factor, self.repeats)

    def inverted(self, numerator: float) -> "Spread":
        """numerator / value (seconds per pass -> tokens per second): the quartiles swap."""
        return Spread(numerator / self.median, numerator / self.q3, numerator / self.q1, self.repeats)

    def describe(self, unit: str = "ms", digits: int = 2) -> str:
        f = f",.{digits}f"
        return (f"{self.median:{f}} {unit} (median of {self.repeats}, IQR {self.q1:{f}}-{self.q3:{f}})").strip()

    def record(self, key: str) -> dict:
        """{key: median, key_iqr: [q1, q3], key_repeats: n}, for metrics.json and `eval --json`."""
        return {key: self.median, f"{key}_iqr": [self.q1, self.q3], f"{key}_repeats": self.repeats}


def timings(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out
