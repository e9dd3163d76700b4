"""The profile of a run as curves: one panel per site, each option's loss increase (the site
compressed alone, untrained) against its stored bytes, one line per method and storage width,
the allocation's choice ringed and the dense site starred. Drawn beside the front by
`autoshrink front RUN_DIR --plot PATH` (as PATH-profile.png) and by `autoshrink profile RUN_DIR
--plot PATH`. As in plot.py, `profile_plot_data` prepares the points and `figure` draws them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

from autoshrink.front.plot import set_log_ticks
from autoshrink.methods import config_class, method_names
from autoshrink.front.profile_table import SiteProfile, read_profile_table

LINTHRESH = 1e-3  # nats/token: below this a loss change is drawn linear (the axis is symlog: changes may be <= 0)
STYLES = ("-", "--", ":", "-.")  # storage widths of one method, narrowest first


class Curve(NamedTuple):
    method: str
    bits: int | None  # None: the method has no storage width knob
    points: list[tuple[float, float]]  # (bytes, loss increase), by bytes

    @property
    def label(self) -> str:
        return self.method if self.bits is None else f"{self.method} {self.bits}-bit"


class Panel(NamedTuple):
    site: str
    title: str
    curves: list[Curve]
    chosen: tuple[float, float] | None  # the allocation's option on this site (None: dense, or unknown)
    dense_bytes: float | None  # the site's dense bytes: a zero-loss marker


class ProfilePlotData(NamedTuple):
    title: str
    panels: list[Panel]


def profile_plot_data(p: SiteProfile) -> ProfilePlotData:
    t = p.table
    sites = (p.allocation or {}).get("sites", {})
    panels = []
    for name in dict.fromkeys(t["site"]):
        site = t[t["site"] == name]
        groups: dict[tuple[str, int | None], list[tuple[float, float]]] = {}
        for r in site.itertuples():
            bits = None if by_bits(r.method) else json.loads(r.knobs).get("bits")
            groups.setdefault((r.method, bits), []).append((float(r.bytes), float(r.loss_delta)))
        curves = [
            Curve(m, b, sorted(pts)) for (m, b), pts in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))
        ]
        picked = site[site["allocated"]]
        chosen = (float(picked.iloc[0]["bytes"]), float(picked.iloc[0]["loss_delta"])) if len(picked) else None
        s = sites.get(name)
        title = f"{name} ({s['role']} {s['shape'][0]}x{s['shape'][1]})" if s else name
        panels.append(Panel(name, title, curves, chosen, float(s["dense_bytes"]) if s else None))
    info = p.info
    what = f"{info.get('model', '?')} under {info.get('budget', '?')}: " if info else ""
    tokens = f", loss on {p.allocation['tokens']:,} held-out valid tokens" if p.allocation else ""
    return ProfilePlotData(f"{what}each site compressed alone, untrained{tokens}", panels)


def by_bits(method: str) -> bool:
    """Whether a method's size is its width (quantisation): its widths make one curve, not one each."""
    return method in method_names() and config_class(method).size_knob == "bits"


def _styles(panels: list[Panel]) -> dict[tuple[str, int | None], tuple[str, str]]:
    """(colour, line style) of every method and width: one colour per method, one style per width, in every panel."""
    methods = sorted({c.method for p in panels for c in p.curves})
    widths = {m: sorted({c.bits or 0 for p in panels for c in p.curves if c.method == m}) for m in methods}
    return {
        (m, b or None): (f"C{i % 10}", STYLES[widths[m].index(b) % len(STYLES)])
        for i, m in enumerate(methods)
        for b in widths[m]
    }


def figure(d: ProfilePlotData):
    """The panels as a matplotlib Figure (Agg), with one legend for all of them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, max(1, len(d.panels)))
    rows = math.ceil(len(d.panels) / cols)
    fig = Figure(figsize=(4.2 * cols + 2.0, 3.3 * rows + 0.6))
    FigureCanvasAgg(fig)
    styles = _styles(d.panels)
    handles: dict[str, object] = {}  # the curves' first, by label; then the markers'
    markers: dict[str, object] = {}
    for k, panel in enumerate(d.panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        xs = [x for c in panel.curves for x, _ in c.points] + ([panel.dense_bytes] if panel.dense_bytes else [])
        for curve in panel.curves:
            colour, style = styles[(curve.method, curve.bits)]
            (line,) = ax.plot(*zip(*curve.points), color=colour, ls=style, marker="o", ms=3, lw=1.2)
            handles.setdefault(curve.label, line)
        if panel.dense_bytes:
            markers.setdefault("dense", ax.scatter([panel.dense_bytes], [0.0], marker="*", s=90, color="C3", zorder=4))
        if panel.chosen:
            ring = ax.scatter(*zip(panel.chosen), s=140, facecolors="none", edgecolors="black", lw=1.5, zorder=5)
            markers.setdefault("allocation", ring)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=LINTHRESH)
        if xs:
            ax.set_xlim(min(xs) / 1.3, max(xs) * 1.3)
            set_log_ticks(ax.xaxis, *ax.get_xlim(), "bytes", most=5)
        ys = [y for c in panel.curves for _, y in c.points] or [0.0]
        # At least one decade past the linear part, so the axis has round ticks; no empty negative half.
        ax.set_ylim(0.0 if min(ys) >= 0 else min(1.5 * min(ys), -0.1 * LINTHRESH), max(1.5 * max(ys), LINTHRESH))
        ax.set_title(panel.title, fontsize=9)
        ax.grid(True, which="both", alpha=0.2)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel("loss increase (nats/token)", fontsize=8)
        if k // cols == rows - 1:
            ax.set_xlabel("stored bytes (log)", fontsize=8)
    fig.suptitle(d.title, fontsize=10)
    handles = {**dict(sorted(handles.items())), **markers}
    fig.legend(list(handles.values()), list(handles), loc="upper right", fontsize=8, bbox_to_anchor=(1.0, 0.93))
    fig.tight_layout(rect=(0, 0, (4.2 * cols) / (4.2 * cols + 2.0), 0.97))
    return fig


def plot_profile(run_dir: str | Path, path: str | Path) -> Path:
    """Draw the profile of a run folder to `path` (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure(profile_plot_data(read_profile_table(run_dir))).savefig(path, dpi=110, format="png")
    return path


def beside(front_png: str | Path) -> Path:
    """Where `autoshrink front --plot PATH` writes the profile's curves: PATH-profile.png beside it."""
    p = Path(front_png)
    return p.with_name(f"{p.stem}-profile{p.suffix or '.png'}")
