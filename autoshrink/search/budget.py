"""Budgets: `25x` (whole-model ratio), `1.5MB`/`800KB`/`2MiB` (stored bytes), `4ms` (latency).

Parsing, and the byte limit a budget sets for a model and space (check_feasible). Fitting
a method to bytes is plan/fit.py; repairing a plan is plan/repair.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from autoshrink.errors import UserError
from autoshrink.plan.bytes import ModelFile, plan_stored_bytes
from autoshrink.search.space import smallest_plan

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
        raise UserError(
            f"budget {text!r} is not understood: use a ratio such as 25x, a size such as 1.5MB, "
            "800KB or 2MiB, or a latency such as 4ms"
        )
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


def check_feasible(
    budget: Budget, space, sites: list, dense_bytes: int, freqs=None, model_file: ModelFile | None = None
) -> int | None:
    """The byte limit of a ratio/size budget; a UserError if no plan of the space can meet it.
    `dense_bytes` is the fp32 size (the ratio's numerator), `model_file` the file of the dense
    model (plan.bytes.ModelFile): the limit bounds the export's file, header included."""
    limit = budget.max_bytes(dense_bytes)
    if limit is None:
        return None
    floor = plan_stored_bytes(sites, smallest_plan(space, sites, freqs), freqs, model_file)
    if floor > limit:
        raise UserError(
            f"budget {budget.text} ({limit:,} bytes) cannot be met: the smallest plan of space "
            f"{space.source} stores {floor:,} bytes ({dense_bytes / floor:.1f}x)"
        )
    return limit
