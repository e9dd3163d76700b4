"""Wall-clock timing as benchmarks use it: warm-up, then the median of repeats."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


@torch.no_grad()
def median_seconds(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
