"""The profile of a run folder (`autoshrink profile RUN_DIR`): each site's options, measured alone
and untrained (profile.csv), as a table per site sorted by bytes, with what the allocation
(allocation.json) chose and which options lie on the site's bytes/loss Pareto front.

`read_profile_table` prepares the rows (ratio, perplexity alone, front and allocation marks);
`render` turns them into text, csv or json; front/profile_plot.py draws the same rows as curves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from autoshrink.allocate.profile import read_profile
from autoshrink.errors import UserError
from autoshrink.front.table import FORMATS, human_bytes
from autoshrink.methods import config_class, method_names
from autoshrink.search.pareto import pareto_mask
from autoshrink.search.run_folder import PROFILE, read_allocation, read_run

COLUMNS = [
    "site",
    "role",
    "method",
    "knobs",
    "finetune_steps",
    "bytes",
    "ratio",
    "loss_delta",
    "ppl",
    "seconds",
    "pareto",
    "allocated",
]
IDENT = ["model", "data", "build"]  # profile.csv's fingerprints of the model, the slice and the calibration


class SiteProfile(NamedTuple):
    run_dir: Path
    info: dict  # run.json ({} where the folder has none)
    allocation: dict | None  # allocation.json (None: written by an older search, or never)
    table: pd.DataFrame  # COLUMNS, site by site in the model's order, each site's options by bytes
    hidden: int  # rows of profile.csv measured for another model, slice or calibration (not shown)

    @property
    def dense_ppl(self) -> float | None:
        return math.exp(self.allocation["dense_loss"]) if self.allocation else None


def read_profile_table(run_dir: str | Path) -> SiteProfile:
    """The profile of a run folder with its derived columns; a folder without profile.csv is a UserError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no run folder {run_dir}")
    path = run_dir / PROFILE
    if not path.is_file():
        raise UserError(
            f"{run_dir} has no {PROFILE}: measure it with `autoshrink profile --budget B --run-dir {run_dir}` "
            "(a search profiles byte budgets unless --no-allocate)"
        )
    rows = read_profile(path)
    if rows.empty:
        raise UserError(f"{path} holds no rows yet: run the profile again to measure them")
    info = read_run(run_dir) if (run_dir / "run.json").is_file() else {}
    allocation = read_allocation(run_dir)
    ident = (allocation or {}).get("profile") or dict(zip(IDENT, rows[IDENT].astype(str).iloc[-1]))
    mine = (rows[IDENT].astype(str) == pd.Series(ident)).all(axis=1).to_numpy()
    table = _derive(rows[mine], allocation)
    return SiteProfile(run_dir, info, allocation, table, int((~mine).sum()))


def _derive(rows: pd.DataFrame, allocation: dict | None) -> pd.DataFrame:
    sites = (allocation or {}).get("sites", {})
    chosen = {
        name: json.dumps(c, sort_keys=True) for name, c in (allocation or {}).get("best", {}).get("plan", {}).items()
    }
    dense_loss = (allocation or {}).get("dense_loss")
    out = []
    for name in dict.fromkeys(rows["site"]):  # the model's order: profile.csv is written site by site
        site = rows[rows["site"] == name].sort_values(["bytes", "loss_delta"], kind="stable")
        shape = sites.get(name, {}).get("shape")
        weight_bytes = 4 * shape[0] * shape[1] if shape else None  # fp32 weight: the site's own ratio
        front = pareto_mask(site[["bytes", "loss_delta"]].to_numpy(dtype=float))
        for (_, r), on_front in zip(site.iterrows(), front):
            out.append(
                {
                    "site": name,
                    "role": sites.get(name, {}).get("role"),
                    "method": r["method"],
                    "knobs": r["knobs"],
                    "finetune_steps": int(r["finetune_steps"]),
                    "bytes": int(r["bytes"]),
                    "ratio": weight_bytes / r["bytes"] if weight_bytes and r["bytes"] > 0 else None,
                    "loss_delta": float(r["loss_delta"]),
                    "ppl": math.exp(dense_loss + r["loss_delta"]) if dense_loss is not None else None,
                    "seconds": float(r["seconds"]),
                    "pareto": bool(on_front),
                    "allocated": chosen.get(name) == r["knobs"],
                }
            )
    return pd.DataFrame(out, columns=COLUMNS)


def short_knobs(table: pd.DataFrame) -> list[str]:
    """Each row's knobs as `rank=32 bits=4`: a method's size knob and bits, and whatever else varies
    among the site's options of that method (the rest is the same on every row: --format csv shows it)."""
    parsed = [json.loads(k) for k in table["knobs"]]
    values: dict[tuple, set] = {}
    for site, knobs in zip(table["site"], parsed):
        for k, v in knobs.items():
            values.setdefault((site, knobs["method"], k), set()).add(json.dumps(v))
    out = []
    for site, knobs in zip(table["site"], parsed):
        method = knobs["method"]
        always = {config_class(method).size_knob, "bits"} if method in method_names() else set()
        shown = [
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in knobs.items()
            if k != "method" and (k in always or len(values[(site, method, k)]) > 1)
        ]
        out.append(" ".join(shown))
    return out


def _num(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def render_table(p: SiteProfile) -> str:
    t, info, a = p.table, p.info, p.allocation
    tokens = f"{a['tokens']:,} held-out valid tokens" if a else "a held-out validation slice"
    dense = f" (dense ppl {p.dense_ppl:.2f})" if a else ""
    what = f"{info.get('model', '?')} under {info.get('budget', '?')}" if info else "the model"
    lines = [
        f"{p.run_dir}: profile of {what}",
        f"{len(t)} options of {t['site'].nunique()} sites, each alone and untrained, on {tokens}{dense}",
        "* on the site's bytes/loss Pareto front   > the allocation's choice   "
        "ratio: the site's fp32 weight / the option's bytes   ppl: that site alone compressed",
    ]
    t = t.assign(short=short_knobs(t))
    header = ("", "method", "knobs", "bytes", "ratio", "loss +", "ppl", "s")
    for name in dict.fromkeys(t["site"]):
        site = t[t["site"] == name]
        s = (a or {}).get("sites", {}).get(name)
        about = [f"{s['role']} {s['shape'][0]}x{s['shape'][1]}, {human_bytes(s['dense_bytes'])} dense"] if s else []
        if a:
            picked = site[site["allocated"]]
            about.append(
                f"allocation: {picked.iloc[0]['method']} {picked.iloc[0]['short']}"
                if len(picked)
                else "allocation: dense"
            )
        lines += ["", f"{name}  {'; '.join(about)}".rstrip()]
        rows = [header]
        for r in site.itertuples():
            rows.append(
                (
                    ("*" if r.pareto else " ") + (">" if r.allocated else " "),
                    r.method,
                    r.short,
                    f"{r.bytes:,}",
                    f"{r.ratio:.1f}x" if r.ratio is not None and math.isfinite(r.ratio) else "-",
                    f"{r.loss_delta:+.4f}".replace("-0.0000", "+0.0000"),
                    _num(r.ppl, ".2f"),
                    f"{r.seconds:.1f}",
                )
            )
        widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
        left = {1, 2}  # method and knobs read left to right
        for row in rows:
            cells = [c.ljust(w) if k in left else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths))]
            lines.append("  " + "  ".join(cells).rstrip())
    if a:
        best = a["best"]
        joint = f", ppl {math.exp(a['dense_loss'] + best['joint_loss']):.2f} jointly" if best["joint_loss"] else ""
        lines += ["", f"allocation within {a['limit']:,} bytes: {best['bytes']:,} bytes{joint} ({best['source']})"]
        for fraction, entry in a.get("ladder", {}).items():
            if entry is not None and float(fraction) < 1:
                ppl = math.exp(a["dense_loss"] + entry["joint_loss"]) if entry["joint_loss"] is not None else None
                lines.append(f"  knapsack at {fraction} of the limit: {entry['bytes']:,} bytes, ppl {_num(ppl, '.2f')}")
        for entry in a.get("hedges", []):
            ppl = math.exp(a["dense_loss"] + entry["joint_loss"])
            lines.append(f"  {entry['source']} (hedge): {entry['bytes']:,} bytes, ppl {ppl:.2f}")
        if a.get("toward_uniform"):
            entry = a["toward_uniform"]
            ppl = math.exp(a["dense_loss"] + entry["joint_loss"])
            lines.append(f"  the allocation {entry['source']}: {entry['bytes']:,} bytes, ppl {ppl:.2f}")
    else:
        lines += ["", "no allocation.json in the run folder: ratios, perplexities and the allocation are not known"]
    if p.hidden:
        lines.append(f"({p.hidden} row(s) of {PROFILE} measured for another model, slice or calibration not shown)")
    return "\n".join(lines) + "\n"


def render(p: SiteProfile, fmt: str = "table") -> str:
    if fmt == "table":
        return render_table(p)
    if fmt == "csv":
        return p.table.to_csv(index=False)
    if fmt == "json":
        records = [
            {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
            for r in p.table.to_dict("records")
        ]
        for r in records:
            r["knobs"] = json.loads(r["knobs"])
        return json.dumps(records, indent=1, default=lambda v: v.item()) + "\n"
    raise UserError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
