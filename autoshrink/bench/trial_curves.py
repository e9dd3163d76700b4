"""Trials side by side: each trial's validation curve (perplexity at each validated step), the
value it reported and where its plan came from, for one or more searches of the same plans.

    python -m autoshrink.bench.trial_curves RUN[=LABEL] [RUN[=LABEL] ...] --out results/trial_lr.md

Used to measure the trials' fine-tuning settings: two searches that differ in one setting (the
trials' learning rate, results/trial_lr.md) draw the same first plans (the allocation's, then the
uniform controls), so their curves compare plan by plan. The best trial of each run is the one
`autoshrink train --trial best` would train.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys

from autoshrink.bench.report import write_report
from autoshrink.search import run_folder
from autoshrink.search.study import load_study, origin_of
from autoshrink.search.trial import val_slice


def run_rows(run_dir: str) -> tuple[list[dict], dict]:
    """(one row per trial: number, state, origin, bytes, curve, reported val ppl; run.json)."""
    info = run_folder.read_run(run_dir)
    rows = []
    for t in sorted(load_study(run_dir).get_trials(), key=lambda t: t.number):
        curve = {int(k): v for k, v in t.user_attrs.get("curve", {}).items()}
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "origin": origin_of(t),
                "bytes": t.user_attrs.get("stored_bytes"),
                "curve": dict(sorted(curve.items())),
                "val_ppl": t.user_attrs.get("val_ppl", math.nan),
            }
        )
    return rows, info


def markdown(runs: list[tuple[str, str]], command: str) -> str:
    lines = ["# Trials side by side", "", f"`{command}`", ""]
    for run_dir, label in runs:
        rows, info = run_rows(run_dir)
        done = [r for r in rows if r["state"] == "COMPLETE"]
        best = min(done, key=lambda r: r["val_ppl"]) if done else None
        lines += [
            f"## {label}",
            "",
            f"`{run_dir}`: `{info.get('command', '?')}`; trials' lr {info.get('trial_lr', 'not recorded')}, "
            f"{info.get('finetune_steps')} steps, halving {info.get('halving')}, validation on the "
            f"{val_slice(info.get('eval_tokens'))}.",
            "",
            "| trial | origin | state | stored bytes | val ppl by step | reported |",
            "|---:|---|---|---:|---|---:|",
        ]
        for r in rows:
            curve = ", ".join(f"{step}: {v:.2f}" for step, v in r["curve"].items()) or "-"
            nbytes = f"{r['bytes']:,}" if r["bytes"] else "-"
            lines.append(f"| {r['number']} | {r['origin']} | {r['state']} | {nbytes} | {curve} | {r['val_ppl']:.2f} |")
        lines += [
            "",
            f"Best completed trial: {best['number']} ({best['origin']}, {best['bytes']:,} bytes, val {best['val_ppl']:.2f})."
            if best
            else "No trial completed.",
            "",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autoshrink.bench.trial_curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", metavar="RUN[=LABEL]", help="run folders, each optionally labelled")
    p.add_argument("--out", default="results/trial_curves.md")
    args = p.parse_args(argv)
    runs = [tuple(r.split("=", 1)) if "=" in r else (r, r) for r in args.runs]
    given = argv if argv is not None else sys.argv[1:]
    command = shlex.join(["python", "-m", "autoshrink.bench.trial_curves", *given])
    write_report(args.out, markdown(runs, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
