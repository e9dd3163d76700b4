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
from autoshrink.search.trial import TrialSettings


CLIP_FACTOR = 3.0  # a trial this many times worse than the front (or the dense model) is drawn at the top edge
_TICK_STEPS = (
    tuple(k / 2 for k in range(2, 20)),
    (1, 1.5, 2, 3, 4, 5, 6, 7, 8),
    (1, 2, 3, 5, 7),
    (1, 2, 5),
    (1,),
)  # finest first


class PlotData(NamedTuple):
    xlabel: str
    trials: list[tuple[float, float, str]]  # (x, val ppl, state) of every measured trial
    front: list[tuple[float, float, int]]  # (x, val ppl, trial number), sorted by x
    dense: tuple[float, float] | None
    budget: float | None  # the vertical line: max bytes or the latency budget in ms
    title: str
    xunit: str = "bytes"  # or "ms": the unit every x tick label carries
    ylabel: str = "validation perplexity"
    ylim: tuple[float, float] | None = None  # the (log) perplexity axis; None: nothing to show
    clipped: tuple[tuple[float, float, int], ...] = ()  # (x, val ppl, trial number) above ylim, drawn at its edge
    budget_label: str = "budget"


def _finite(*values) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _dense_latency_ms(run_dir: Path) -> float | None:
    """The dense model's measured latency, from the run's latency table (latency budgets only)."""
    try:
        entries = json.loads((run_dir / "latency_cache.json").read_text())["entries"]
        return 1e3 * next(e["seconds"] for e in entries if e["site"] == "<model>")
    except (OSError, ValueError, KeyError, StopIteration):
        return None


def _ppl_axis(ys: list[float], anchors: list[float]) -> tuple[tuple[float, float] | None, float]:
    """The perplexity axis (low, high) and the ceiling above which a point is clipped.

    The anchors (the front and the dense model) always show; a trial worse than CLIP_FACTOR times
    the worst anchor would squeeze them into the bottom of the plot, so it is clipped instead."""
    everything = ys + anchors
    if not everything:
        return None, math.inf
    reference = max(anchors) if anchors else sorted(everything)[len(everything) // 2]
    ceiling = CLIP_FACTOR * reference
    shown = [y for y in everything if y <= ceiling]
    low, high = min(shown), max(shown)
    top = high * (1.25 if len(shown) < len(everything) else 1.08)  # room for the clipped markers at the edge
    return (low / 1.08, top), ceiling


def _validation_label(info: dict) -> str:
    tokens = info.get("eval_tokens", TrialSettings.eval_tokens)
    return f"val ppl (first {tokens:,} valid tokens, log)" if tokens else "val ppl (valid split, log)"


def plot_data(f: Front) -> PlotData:
    x = f.objective
    measured = [
        (float(r[x]), float(r["val_ppl"]), r["state"], int(r["number"]))
        for _, r in f.trials.iterrows()
        if r["state"] in ("COMPLETE", "PRUNED") and _finite(r[x], r["val_ppl"])
    ]
    front = [(float(r[x]), float(r["val_ppl"]), int(r["number"])) for _, r in f.front.iterrows()]
    info = f.info
    if x == "latency_ms":
        dense_x, budget, xlabel, xunit = (
            _dense_latency_ms(f.run_dir),
            parse_budget(info["budget"]).value,
            "latency (log)",
            "ms",
        )
        budget_label = f"budget {info['budget']}"
    else:
        dense_x, budget, xlabel, xunit = info.get("dense_bytes"), info.get("max_bytes"), "stored bytes (log)", "bytes"
        budget_label = f"budget {info.get('budget', '?')} = {tick_label(budget, 'bytes')}" if budget else "budget"
    dense_y = info.get("dense_val_ppl")
    dense = (float(dense_x), float(dense_y)) if _finite(dense_x, dense_y) else None
    anchors = [y for _, y, _ in front] + ([dense[1]] if dense else [])
    ylim, ceiling = _ppl_axis([y for _, y, _, _ in measured], anchors)
    clipped = tuple(sorted((mx, my, n) for mx, my, _, n in measured if my > ceiling))
    title = (
        f"{info.get('model', '?')} under {info.get('budget', '?')}: {len(front)} on the front of {len(f.trials)} trials"
    )
    return PlotData(
        xlabel,
        [(mx, my, s) for mx, my, s, _ in measured],
        sorted(front),
        dense,
        budget,
        title,
        xunit=xunit,
        ylabel=_validation_label(info),
        ylim=ylim,
        clipped=clipped,
        budget_label=budget_label,
    )


def tick_label(value: float, unit: str) -> str:
    """A tick's text in its unit: 1.5 MB, 3.2 ms, 45."""
    if unit == "bytes":
        for name, size in (("MB", 1e6), ("KB", 1e3)):
            if value >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.3g} B"
    if unit == "ms":
        return f"{value:.3g} ms"
    return f"{value:,.0f}" if value >= 10 else f"{value:.3g}"


def nice_ticks(low: float, high: float, most: int = 8) -> list[float]:
    """Round values (1, 2, 5 x 10^k and finer) inside [low, high] for a log axis: the finest set
    that has at most `most` of them."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for steps in _TICK_STEPS:
        ticks = [m * 10.0**k for k in decades for m in steps if low <= m * 10.0**k <= high]
        if len(ticks) <= most:
            return ticks
    return []


def set_log_ticks(axis, low: float, high: float, unit: str, most: int = 8) -> None:
    """At most `most` round ticks (`nice_ticks`) labelled in `unit` on a log axis between low and high."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    ticks = nice_ticks(low, high, most)
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FixedFormatter([tick_label(t, unit) for t in ticks]))
    axis.set_minor_formatter(NullFormatter())  # log axes label minor ticks in 10^x notation otherwise


def _declutter(fig, ax, labels: list) -> None:
    """Shift each label (offset-points annotations, in order) down or up by its own height until it
    overlaps no label placed before it: front points crowd just under the budget line. Front labels
    carry a thin leader line to their point, so a shifted label still says which point it names."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()

    def text_box(label):  # the text alone: an annotation's own extent includes its leader line
        return Text.get_window_extent(label, renderer)

    def inside(box) -> bool:
        frame = ax.get_window_extent(renderer)
        return frame.y0 <= box.y0 and box.y1 <= frame.y1

    placed = []
    for label in labels:
        dx, dy = label.xyann
        height = text_box(label).height * 72 / fig.dpi + 1
        shifts = (0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5, -6, 6, -8, 8, -10, 10)  # down first: labels come top to bottom
        free = [
            k for k in shifts if not any(_shifted(label, dx, dy + k * height, text_box).overlaps(o) for o in placed)
        ]
        best = next((k for k in free if inside(_shifted(label, dx, dy + k * height, text_box))), free[0] if free else 0)
        label.xyann = (dx, dy + best * height)
        placed.append(text_box(label))


def _shifted(label, dx: float, dy: float, text_box):
    label.xyann = (dx, dy)
    return text_box(label)


def figure(d: PlotData):
    """The plot as a matplotlib Figure (Agg): trials faded, the front as a step line with its trial
    numbers, the dense model with its perplexity, the budget line, clipped trials at the top edge."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 4.8))
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state
    ax = fig.add_subplot()
    top = d.ylim[1] if d.ylim else math.inf
    for state, marker, label in (("COMPLETE", "o", "trials"), ("PRUNED", "x", "stopped early")):
        pts = [(x, y) for x, y, s in d.trials if s == state and y <= top]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, color="grey", alpha=0.35, s=22, label=label)
    labels = []
    if d.budget:
        ax.axvline(d.budget, color="C2", ls="--", lw=1, label="budget")
        labels.append(
            ax.annotate(
                d.budget_label,
                (d.budget, 1),
                xycoords=("data", "axes fraction"),
                textcoords="offset points",
                xytext=(-3, -4),
                rotation=90,
                ha="right",
                va="top",
                fontsize=8,
                color="C2",
            )
        )
    if d.front:
        xs, ys, numbers = zip(*d.front)
        ax.step(xs, ys, where="post", color="C0", lw=1.5)
        ax.scatter(xs, ys, color="C0", s=40, zorder=3, label="Pareto front")
        leader = dict(arrowstyle="-", color="C0", lw=0.5, alpha=0.6, shrinkA=0, shrinkB=4)
        # Below-left of its point: the step line leaves a front point to the right and reaches it from above.
        labels += [
            ax.annotate(
                f"#{n}",
                (x, y),
                textcoords="offset points",
                xytext=(-4, -4),
                fontsize=8,
                color="C0",
                ha="right",
                va="top",
                arrowprops=leader,
            )
            for x, y, n in sorted(d.front, key=lambda p: -p[1])
        ]  # top to bottom, as _declutter shifts down
    if d.dense is not None:
        ax.scatter([d.dense[0]], [d.dense[1]], marker="*", s=160, color="C3", zorder=4, label="dense")
        labels.append(
            ax.annotate(
                f"dense {d.dense[1]:.2f}",
                d.dense,
                textcoords="offset points",
                xytext=(-8, 6),
                ha="right",
                fontsize=8,
                color="C3",
            )
        )
    if d.clipped:
        xs = [x for x, _, _ in d.clipped]
        ax.scatter(
            xs,
            [top] * len(xs),
            marker="^",
            color="grey",
            s=30,
            clip_on=False,
            zorder=3,
            label=f"above {d.ylim[1]:,.0f} (clipped)",
        )
        labels += [
            ax.annotate(
                f"#{n}: {y:,.0f}", (x, top), textcoords="offset points", xytext=(4, -12), fontsize=7, color="grey"
            )
            for x, y, n in d.clipped
        ]
    xs = (
        [x for x, _, _ in d.trials]
        + [x for x, _, _ in d.front]
        + ([d.dense[0]] if d.dense else [])
        + ([d.budget] if d.budget else [])
    )
    if xs:
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
        set_log_ticks(ax.xaxis, *ax.get_xlim(), d.xunit)
    if d.ylim:
        ax.set_yscale("log")
        ax.set_ylim(*d.ylim)
        set_log_ticks(ax.yaxis, *d.ylim, "ppl")
    ax.set_xlabel(d.xlabel)
    ax.set_ylabel(d.ylabel)
    ax.set_title(d.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.2)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(
            fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0
        )  # outside: no label under it
    fig.tight_layout()
    _declutter(fig, ax, labels)
    return fig


def draw(d: PlotData, path: str | Path) -> Path:
    """Write the plot as a PNG (see `figure`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(d).savefig(path, dpi=120, format="png")
    return path


def plot(run_dir: str | Path, path: str | Path) -> Path:
    """Draw the front of a run folder to `path` (PNG)."""
    return draw(plot_data(read_front(run_dir)), path)
