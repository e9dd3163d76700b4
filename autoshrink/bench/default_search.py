"""How long the default search takes, profile included, from an empty cache (issue 15's goal: the
default `autoshrink search --budget 25x` within 15 minutes on 2 CPU cores, with a better plan than
a uniform one).

    python -m autoshrink.bench.default_search [--budget 25x] [--run-dir DIR] [--out results/default_search.md] [-- SEARCH ARGS]

Runs `autoshrink search --budget B --run-dir DIR [SEARCH ARGS]` as a user would, with
$AUTOSHRINK_CACHE pointed at an empty folder (no calibration or profile rows of earlier searches
reused; the model weights shipped in the package are read as usual), and reports its wall time,
the allocation's share of it, every trial with its origin, the best trial and the best uniform
control. The load average before and after says whether other work shared the machine: the time
is only a measurement of the default on 2 cores when it is near 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoshrink.bench.report import commit, write_report
from autoshrink.bench.search_runs import trial_rows, winner
from autoshrink.search import run_folder

GOAL_MINUTES = 15.0


def _uniform_best(rows: list[dict]) -> dict | None:
    """The uniform control of lowest validation perplexity at the highest steps any control reached."""
    controls = [r for r in rows if r["origin"].startswith("uniform") and r["feasible"]]
    if not controls:
        return None
    most = max(r["steps"] for r in controls)
    return min((r for r in controls if r["steps"] == most), key=lambda r: r["val_ppl"])


def markdown(run_dir: Path, command: str, wall_s: float, load: tuple[float, float], peak_rss: int) -> str:
    """The report of one finished default search in `run_dir` that took `wall_s` seconds."""
    info = run_folder.read_run(run_dir)
    allocation = run_folder.read_allocation(run_dir) or {}
    alloc_s = float(allocation.get("seconds", {}).get("total", 0.0))
    rows = trial_rows(run_dir)
    best, control = winner(rows), _uniform_best(rows)
    minutes = wall_s / 60
    lines = [
        f"## The default search, profile included, from an empty cache ({info['model']}, {info['budget']})",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {os.cpu_count()} cores), commit {commit()}, "
        f"`python -m autoshrink.bench.default_search` running `{command}`. "
        f"Load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after "
        f"({'the machine was otherwise idle' if max(load) < 1.5 else 'other work shared the machine: the time is an upper bound'}).",
        "",
        f"- Wall time: **{minutes:.1f} min** ({wall_s:,.0f} s); profile, knapsack and joint refinement "
        f"{alloc_s / 60:.1f} min of it; {info['trials']} trials of {info['finetune_steps']} fine-tuning steps "
        f"(successive halving {info.get('halving', 1)}). Peak RSS {peak_rss / 2**30:.2f} GB.",
        "",
        "| trial | origin | state | stored bytes | steps | val ppl |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['origin']} | {r['state']} | {r['stored_bytes']:,} | {r['steps']} | {r['val_ppl']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"- Within {GOAL_MINUTES:g} minutes: **{'yes' if minutes <= GOAL_MINUTES else 'no'}** ({minutes:.1f} min)."
    )
    if best is not None:
        # Compared at the control's steps (a stopped control reached fewer): the best trial's validation there.
        ours = best["curve"].get(control["steps"], best["val_ppl"]) if control is not None else best["val_ppl"]
        beats = control is None or (ours < control["val_ppl"] and not best["origin"].startswith("uniform"))
        against = (
            f"the best uniform control, {control['origin']}, {control['val_ppl']:.2f} at {control['steps']} steps "
            f"(the best trial there: {ours:.2f})"
            if control is not None
            else "no uniform control trained"
        )
        lines.append(
            f"- Best trial: {best['trial']}, {best['origin']}, val ppl {best['val_ppl']:.2f} "
            f"(dense {info['dense_val_ppl']:.2f}); {against}: "
            f"**{'a per-site plan wins' if beats else 'not beaten'}**."
        )
    else:
        lines.append("- No trial completed.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="25x")
    p.add_argument("--run-dir", default=None, help="a new folder (default results/runs/default-search-BUDGET-TIME)")
    p.add_argument("--out", default="results/default_search.md")
    p.add_argument("--report-only", action="store_true", help="report the search --run-dir holds again, unrun")
    args = p.parse_args(own)
    run_dir = Path(args.run_dir or f"results/runs/default-search-{args.budget}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.report_only:
        measured = run_dir / "default_search.json"
        if not measured.is_file():
            p.exit(2, f"{p.prog}: {measured} not found: --report-only reports a search this benchmark ran\n")
        m = json.loads(measured.read_text())
        command = m.get("command") or run_folder.read_run(run_dir)["command"]
        write_report(args.out, markdown(run_dir, command, m["wall_s"], tuple(m["load"]), m["peak_rss"]))
        return 0
    if run_dir.exists() and any(run_dir.iterdir()):
        p.exit(2, f"{p.prog}: {run_dir} is not empty: a resumed search would not measure the whole default\n")
    command = ["autoshrink", "search", "--budget", args.budget, "--run-dir", str(run_dir), *extra]
    with tempfile.TemporaryDirectory(prefix="autoshrink-cache-") as cache:
        env = {**os.environ, "AUTOSHRINK_CACHE": cache}
        before = os.getloadavg()[0]
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "autoshrink", *command[1:]], env=env)
        wall = time.monotonic() - start
        after = os.getloadavg()[0]
    if done.returncode != 0:
        p.exit(done.returncode, f"{p.prog}: the search exited with status {done.returncode}; nothing reported\n")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux
    text = markdown(run_dir, " ".join(command), wall, (before, after), peak)
    write_report(args.out, text)
    (run_dir / "default_search.json").write_text(
        json.dumps({"wall_s": wall, "load": [before, after], "peak_rss": peak})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
