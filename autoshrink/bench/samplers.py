"""Search quality and cost: hypervolume against trial count per sampler, trial overhead, and the
number of infeasible plans trained (must be 0).

    python -m autoshrink.bench.samplers [--model kjv-lstm-tiny] [--budget 10x] [--trials 12] [--seeds 0 1 2]

`--samplers` takes the search's samplers and PLAIN, random search as a user without autoshrink's
first trials would run it (no allocation, no uniform controls): "random" shares the other samplers'
allocated and uniform first trials, so it asks what a sampler adds after them; PLAIN asks what
the whole search adds over random search.

Hypervolume is of the front of feasible COMPLETE trials in (stored bytes / dense bytes,
val ppl / dense val ppl), against the reference point (1 / budget ratio, 2): the area of
that box the front dominates. Each finished run folder is reused, so an interrupted benchmark
resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from autoshrink.bench.report import commit, write_report
from autoshrink.bench.search_runs import ran_with
from autoshrink.search.pareto import hypervolume_2d
from autoshrink.search.config import SearchConfig
from autoshrink.search.study import SAMPLERS
from autoshrink.search.controller import search

PLAIN = "random-plain"  # random search without the allocation's plans and the uniform controls
BASELINES = {
    "random": "random search's (the same allocated and uniform first trials)",
    PLAIN: "plain random search's (no allocation, no uniform controls)",
}


def hypervolume_curve(
    trials: pd.DataFrame, dense_bytes: int, dense_ppl: float, ref: tuple[float, float]
) -> list[float]:
    """Hypervolume after each trial (by trial number)."""
    curve = []
    trials = trials.sort_values("number")
    for k in range(1, len(trials) + 1):
        done = trials.iloc[:k]
        ok = done[(done["state"] == "COMPLETE") & done["feasible"].astype(bool)]
        pts = (
            np.column_stack([ok["stored_bytes"].astype(float) / dense_bytes, ok["val_ppl"].astype(float) / dense_ppl])
            if len(ok)
            else np.zeros((0, 2))
        )
        curve.append(hypervolume_2d(pts, ref))
    return curve


def sampled_stats(study, trials: pd.DataFrame, max_bytes: int) -> dict:
    """What the sampler's own trials (not the allocation's or the warm start's) did in one run:
    how many trained, how many are on the final front, and the lowest val ppl of those within the budget."""
    from autoshrink.search.run_folder import front_rows
    from autoshrink.search.study import origin_of

    sampled = {t.number for t in study.get_trials(deepcopy=False) if origin_of(t) == "sampled"}
    mine = trials[trials["number"].isin(sampled) & trials["steps"].notna()]
    within = mine[(mine["state"] == "COMPLETE") & mine["feasible"].astype(bool) & (mine["stored_bytes"] <= max_bytes)]
    front = front_rows(trials)
    return {
        "trained": len(mine),
        "on_front": int(front["number"].isin(sampled).sum()),
        "best": float(within["val_ppl"].min()) if len(within) else float("nan"),
    }


def sampled_lines(stats: dict[str, list[dict]]) -> list[str]:
    """Per sampler, its own trials summed (trained, on the front) and its best plan within the budget, over seeds."""
    lines = [
        "| sampler | its trials that trained | of them on the final front | its best val ppl within the budget (per seed) |",
        "|---|---:|---:|---|",
    ]
    for name, runs in stats.items():
        best = ", ".join("-" if np.isnan(r["best"]) else f"{r['best']:.2f}" for r in runs)
        trained, front = sum(r["trained"] for r in runs), sum(r["on_front"] for r in runs)
        lines.append(f"| {name} | {trained} | {front} | {best} |")
    return lines


def _reached(ours: float, random_2n: float) -> str:
    """yes / no, and "tie" when equal: random search added nothing between N and 2N trials either."""
    if math.isclose(ours, random_2n, rel_tol=1e-9, abs_tol=1e-12):
        return "yes (tie)"
    return "yes" if ours > random_2n else "no"


def verdict_lines(curves: dict[str, list[list[float]]], trials: int) -> list[str]:
    """The pick and the goal (reach random search's hypervolume at 2N trials in N), from the means."""
    mean = {name: [statistics.mean(c[k] for c in cs) for k in range(trials)] for name, cs in curves.items()}
    best = max((n for n in mean if n != PLAIN), key=lambda name: (mean[name][-1], sum(mean[name])))  # a sampler to pick
    out = [f"Highest mean hypervolume after {trials} trials: **{best}** ({mean[best][-1]:.4f})."]
    ns = [n for n in (4, 6, 8, 12) if 2 * n <= trials]
    for base, label in BASELINES.items():
        if base not in mean or not ns:
            continue
        for name in mean:
            if name in BASELINES:
                continue
            met = [f"N={n}: {_reached(mean[name][n - 1], mean[base][2 * n - 1])}" for n in ns]
            out.append(f"- {name} reaches {label} hypervolume at 2N trials in N trials: {', '.join(met)}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kjv-lstm-tiny")
    p.add_argument("--budget", default="10x")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--finetune-steps", type=int, default=20)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samplers", nargs="+", default=[*SAMPLERS, PLAIN], choices=[*SAMPLERS, PLAIN])
    p.add_argument("--runs", default="results/runs/bench-samplers")
    p.add_argument("--out", default="results/search.md")
    args = p.parse_args(argv)
    from autoshrink.search.run_folder import trial_rows

    curves: dict[str, list[list[float]]] = {}
    overhead, trained_over, wall, spent = [], 0, 0.0, 0.0
    own: dict[str, list[dict]] = {}
    ran: dict[str, list[str]] = {}  # per sampler, the code its runs ran (a finished run is read back, not rerun)
    for sampler in args.samplers:
        for seed in args.seeds:
            run_dir = Path(args.runs) / f"{args.model}-{args.budget}-{sampler}-seed{seed}"
            start = time.time()
            config = SearchConfig(
                args.budget,
                model=args.model,
                trials=args.trials,
                finetune_steps=args.finetune_steps,
                run_dir=run_dir,
                seed=seed,
                sampler="random" if sampler == PLAIN else sampler,
                allocate=sampler != PLAIN,
                warm_start=sampler != PLAIN,
            )
            result = search(config, log=lambda line: print(line, flush=True))
            wall += time.time() - start
            spent += sum(t.user_attrs.get("seconds", 0.0) for t in result.study.get_trials(deepcopy=False))
            info = json.loads((run_dir / "run.json").read_text())
            ran.setdefault(sampler, []).append(ran_with(info))
            trials = trial_rows(result.study)
            trials["feasible"] = trials["feasible"].astype(bool)
            ref = (1.0 / float(args.budget.rstrip("x")), 2.0)
            curves.setdefault(sampler, []).append(
                hypervolume_curve(trials, info["dense_bytes"], info["dense_val_ppl"], ref)
            )
            own.setdefault(sampler, []).append(sampled_stats(result.study, trials, info["max_bytes"]))
            complete = [t for t in result.study.get_trials() if t.state.name == "COMPLETE"]
            overhead += [1 - t.user_attrs["finetune_seconds"] / t.user_attrs["seconds"] for t in complete]
            trained_over += sum(
                1
                for t in result.study.get_trials()
                if t.user_attrs.get("steps") and t.user_attrs.get("stored_bytes", 0) > info["max_bytes"]
            )
    ks = sorted({k for k in (3, 6, 12, 18, args.trials) if k <= args.trials})
    lines = [
        f"## Search quality: hypervolume against trials ({args.model}, budget {args.budget})",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {torch.get_num_threads()} threads), commit {commit()}, "
        f"`python -m autoshrink.bench.samplers --model {args.model} --budget {args.budget} --trials {args.trials} "
        f"--finetune-steps {args.finetune_steps} --samplers {' '.join(args.samplers)}`. Mean ± std over seeds "
        f"{args.seeds}; higher is better. "
        "Hypervolume of the front in (bytes/dense, ppl/dense ppl) against the point (1/budget, 2). Code of each "
        "sampler's runs, invocation by invocation (once a run has finished, later ones only read it back): "
        + "; ".join(f"{name} {', '.join(dict.fromkeys(r))}" for name, r in ran.items())
        + ".",
        "",
        "| sampler | " + " | ".join(f"HV after {k} trials" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for sampler, cs in curves.items():
        cells = []
        for k in ks:
            vals = [c[k - 1] for c in cs]
            cells.append(f"{statistics.mean(vals):.4f} ± {statistics.pstdev(vals):.4f}")
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    lines += ["", *verdict_lines(curves, args.trials)]
    lines += [
        "",
        "The samplers' own trials (after the allocation's plans and the uniform controls, which every "
        "sampler's run shares):",
        "",
        *sampled_lines(own),
    ]
    lines += [
        "",
        f"Trial overhead (share of a completed trial's wall time outside fine-tuning steps: compress, "
        f"byte accounting, validation, latency, bookkeeping): median {statistics.median(overhead):.0%} "
        f"over {len(overhead)} trials, each with {args.finetune_steps} fine-tuning steps.",
        f"Infeasible plans trained: {trained_over}. Trials' own time over all runs: {spent / 60:.1f} min "
        f"(this invocation: {wall / 60:.1f} min; finished runs are read back, not run again).",
        "",
    ]
    write_report(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
