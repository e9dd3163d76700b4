"""What each search run's trials chose: per run, every trial's origin (the allocation, a hedge, a
ladder plan, a uniform control, the sampler), bytes, steps and validation perplexity, and which
origin won. For comparing search versions on one budget (issue 15: does the search beat its seeds?).

    python -m autoshrink.bench.search_runs RUN_DIR [RUN_DIR ...] [--out results/search_runs.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from autoshrink.bench.report import commit, write_report
from autoshrink.errors import UserError
from autoshrink.search import run_folder
from autoshrink.search.study import load_study, origin_of


def trial_rows(run_dir: Path) -> list[dict]:
    """Every trial that trained (complete or stopped), in order: its origin and its figures."""
    rows = []
    for t in load_study(run_dir).get_trials(deepcopy=False):
        if "steps" not in t.user_attrs or t.user_attrs.get("val_ppl") is None:
            continue  # never trained (failed before its first step)
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "origin": origin_of(t),
                "stored_bytes": t.user_attrs.get("stored_bytes"),
                "steps": t.user_attrs["steps"],
                "val_ppl": t.user_attrs["val_ppl"],
                "feasible": bool(t.user_attrs.get("feasible", True)),
                "curve": {int(k): v for k, v in t.user_attrs.get("curve", {}).items()},
            }
        )
    return rows


def winner(rows: list[dict]) -> dict | None:
    """The complete, feasible trial of lowest validation perplexity at the run's full steps."""
    done = [r for r in rows if r["state"] == "COMPLETE" and r["feasible"]]
    if not done:
        return None
    full = max(r["steps"] for r in done)
    return min((r for r in done if r["steps"] == full), key=lambda r: r["val_ppl"])


def ran_with(info: dict) -> str:
    """The commits a run's invocations ran (run.json "commits"), "not recorded" for older runs."""
    known = list(dict.fromkeys(c for c in info.get("commits", []) if c))
    return "commit " + ", ".join(known) if known else "commit not recorded (a run begun before run.json kept it)"


def markdown(run_dirs: list[Path], command: str) -> str:
    lines = [
        "## What the search's trials chose, run by run",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `{command}`. Trials in the order they ran; "
        "a stopped trial (successive halving) shows the perplexity and steps it reached.",
        "",
    ]
    for run_dir in run_dirs:
        info = run_folder.read_run(run_dir)
        rows = trial_rows(run_dir)
        best = winner(rows)
        lines += [
            f"### `{run_dir}`: {info['model']} under {info['budget']}, {info['finetune_steps']} steps per trial",
            "",
            f"Space: `{info.get('space')}`. Code: {ran_with(info)}.",
            "",
            "| trial | origin | state | stored bytes | steps | val ppl |",
            "|---:|---|---|---:|---:|---:|",
            *(
                f"| {r['trial']} | {r['origin']} | {r['state']} | {r['stored_bytes']:,} | {r['steps']} | {r['val_ppl']:.2f} |"
                for r in rows
            ),
            "",
            f"Best: trial {best['trial']}, {best['origin']}, val ppl {best['val_ppl']:.2f}."
            if best
            else "No complete feasible trial.",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autoshrink.bench.search_runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="results/search_runs.md")
    args = p.parse_args(argv)
    run_dirs = [Path(r) for r in args.run_dirs]
    try:
        text = markdown(run_dirs, "python -m autoshrink.bench.search_runs " + " ".join(args.run_dirs))
    except UserError as e:
        p.error(str(e))
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
