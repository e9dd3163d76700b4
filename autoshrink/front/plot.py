"""The front of a run as a plot: val perplexity against stored bytes (or latency), the front
highlighted, the dense model and the budget marked. Drawing is apart from computing, as in
Optuna's visualization: `plot_data` prepares the points, `draw` hands them to matplotlib (Agg,
imported only when a plot is asked for).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

from autoshrink.front.table import Front, read_front
from autoshrink.search.budget import parse_budget


class PlotData(NamedTuple):
    xlabel: str
    trials: list[tuple[float, float, str]]  # (x, val ppl, state) of every measured trial
    front: list[tuple[float, float, int]]  # (x, val ppl, trial number), sorted by x
    dense: tuple[float, float] | None
    budget: float | None  # the vertical line: max bytes or the latency budget in ms
    title: str


def _finite(*values) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _dense_latency_ms(run_dir: Path) -> float | None:
    """The dense model's measured latency, from the run's latency table (latency budgets only)."""
    try:
        entries = json.loads((run_dir / "latency_cache.json").read_text())["entries"]
        return 1e3 * next(e["seconds"] for e in entries if e["site"] == "<model>")
    except (OSError, ValueError, KeyError, StopIteration):
        return None


def plot_data(f: Front) -> PlotData:
    x = f.objective
    trials = [(float(r[x]), float(r["val_ppl"]), r["state"]) for _, r in f.trials.iterrows()
              if r["state"] in ("COMPLETE", "PRUNED") and _finite(r[x], r["val_ppl"])]
    front = [(float(r[x]), float(r["val_ppl"]), int(r["number"])) for _, r in f.front.iterrows()]
    info = f.info
    if x == "latency_ms":
        dense_x, budget, xlabel = _dense_latency_ms(f.run_dir), parse_budget(info["budget"]).value, "latency (ms, log)"
    else:
        dense_x, budget, xlabel = info.get("dense_bytes"), info.get("max_bytes"), "stored bytes (log)"
    dense_y = info.get("dense_val_ppl")
    dense = (float(dense_x), float(dense_y)) if _finite(dense_x, dense_y) else None
    title = f"{info.get('model', '?')} under {info.get('budget', '?')}: {len(front)} on the front of {len(f.trials)} trials"
    return PlotData(xlabel, trials, sorted(front), dense, budget, title)


def draw(d: PlotData, path: str | Path) -> Path:
    """Write the plot as a PNG: all trials faded, the front highlighted as a step line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8))
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state
    ax = fig.add_subplot()
    for state, marker, label in (("COMPLETE", "o", "trials"), ("PRUNED", "x", "stopped early")):
        pts = [(x, y) for x, y, s in d.trials if s == state]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color="grey", alpha=0.35, s=22, label=label)
    if d.front:
        xs, ys, numbers = zip(*d.front)
        ax.step(xs, ys, where="post", color="C0", lw=1.5)
        ax.scatter(xs, ys, color="C0", s=40, zorder=3, label="Pareto front")
        for x, y, n in d.front:
            ax.annotate(f"#{n}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, color="C0")
    if d.dense is not None:
        ax.scatter([d.dense[0]], [d.dense[1]], marker="*", s=160, color="C3", zorder=4, label="dense")
    if d.budget:
        ax.axvline(d.budget, color="C2", ls="--", lw=1, label="budget")
    if d.trials or d.dense or d.budget:
        ax.set_xscale("log")
    ax.set_xlabel(d.xlabel)
    ax.set_ylabel("validation perplexity")
    ax.set_title(d.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.2)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


def plot(run_dir: str | Path, path: str | Path) -> Path:
    """Draw the front of a run folder to `path` (PNG)."""
    return draw(plot_data(read_front(run_dir)), path)
