"""The Pareto front of a run folder as a table, csv or json (`autoshrink front`).

The front is read from the run's study.db through search/run_folder.py, not from front.csv, so
a search that is still going shows what it has finished so far. This module only renders it;
the plot is front/plot.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from autoshrink.search.trial import val_slice
from autoshrink.errors import UserError
from autoshrink.search.run_folder import COLUMNS, RunRecord, read

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "csv", "json")
Front = RunRecord  # what the renderers take: run.json, every trial, the front


def read_front(run_dir: str | Path) -> Front:
    """The run's record: run.json, every trial, the front (by the budget's objective)."""
    return read(run_dir)


def front_table(run_dir: str | Path) -> "pd.DataFrame":
    """The front as a DataFrame: the columns of front.csv (number, state, stored_bytes, ratio,
    latency_ms, val_ppl, seconds, steps, methods, origin, plan), sorted by the objective."""
    return read_front(run_dir).front[COLUMNS]


# --- renderers ------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    """1.23 MB, 45.60 KB, 789 B."""
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _num(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _state_counts(trials: "pd.DataFrame") -> str:
    counts = trials["state"].value_counts()
    return ", ".join(f"{n} {state.lower()}" for state, n in counts.items())


def render_table(f: Front) -> str:
    info = f.info
    limit = f" (<= {info['max_bytes']:,} bytes)" if info.get("max_bytes") else ""
    dense = (
        f"; dense {human_bytes(info['dense_bytes'])}, val ppl {_num(info.get('dense_val_ppl'), '.2f')}"
        if info.get("dense_bytes")
        else ""
    )
    lines = [
        f"{f.run_dir}: budget {info.get('budget', '?')}{limit}, {len(f.trials)} trial(s): "
        f"{_state_counts(f.trials) or 'none yet'}{dense}"
    ]
    if f.front.empty:
        lines.append("no feasible completed trial yet: the front is empty")
        return "\n".join(lines) + "\n"
    rows = [("trial", "ratio", "bytes", "latency ms", "val ppl", "from", "methods")]
    for r in f.front.itertuples():
        rows.append(
            (
                str(r.number),
                f"{_num(r.ratio, '.1f')}x",
                human_bytes(r.stored_bytes),
                _num(r.latency_ms, ".2f"),
                _num(r.val_ppl, ".2f"),
                r.origin,
                r.methods,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:  # numbers right-aligned, the plan's origin left-aligned, the methods last
        cells = [cell.rjust(w) for cell, w in zip(row[:5], widths)] + [row[5].ljust(widths[5])]
        lines.append("  ".join(cells) + "  " + row[6])
    lines.append(f"val ppl: {val_slice()}, after {info.get('finetune_steps', '?')} fine-tuning steps")
    best = f.front.sort_values("val_ppl").iloc[0]
    lines.append(f"best (lowest val ppl): trial {best['number']}  ->  autoshrink train {f.run_dir} --trial best")
    if (f.trials["state"] == "RUNNING").any():
        lines.append("the search is still running: this is the front so far")
    return "\n".join(lines) + "\n"


def front_records(f: Front) -> list[dict]:
    """The front's rows as JSON-ready dicts (plan as an object, missing values as null)."""
    out = []
    for row in f.front[COLUMNS].to_dict("records"):
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        clean["plan"] = json.loads(row["plan"])
        out.append({k: (v.item() if hasattr(v, "item") else v) for k, v in clean.items()})  # numpy -> Python
    return out


def render(f: Front, fmt: str = "table") -> str:
    if fmt == "table":
        return render_table(f)
    if fmt == "csv":
        return f.front[COLUMNS].to_csv(index=False)
    if fmt == "json":
        return json.dumps(front_records(f), indent=1, allow_nan=False) + "\n"
    raise UserError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
