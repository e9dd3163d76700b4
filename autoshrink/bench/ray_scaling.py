"""Wall time of the same search with 1 and 2 Ray workers (and the Optuna backend as a baseline).

    python -m autoshrink.bench.ray_scaling [--model kjv-lstm-tiny] [--budget 10x] [--trials 8] [--workers 1 2]

Each configuration runs in a fresh run folder with the same seed, so the sampler draws the same
plans; each trial runs on one torch thread (`--cpus-per-trial 1`) so that workers do not fight
for cores. ASHA's decisions depend on the order in which trials reach a rung, which differs with
the number of workers, so the fine-tuning steps trained differ too: the report gives steps
trained per wall second beside the wall time. Wall time counts everything the user waits for:
loading the model and data, starting Ray, the trials.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch

from autoshrink.bench.report import commit, write_report
from autoshrink.search.config import SearchConfig
from autoshrink.search.controller import search


def measure(args, backend: str, workers: int) -> dict:
    run_dir = Path(args.runs) / f"{args.model}-{args.budget}-{backend}-w{workers}"
    shutil.rmtree(run_dir, ignore_errors=True)  # timings need a fresh search, not a resumed one
    load = os.getloadavg()[0]
    start = time.time()
    config = SearchConfig(
        args.budget,
        model=args.model,
        trials=args.trials,
        finetune_steps=args.finetune_steps,
        backend=backend,
        workers=workers,
        cpus_per_trial=1,
        run_dir=run_dir,
        seed=args.seed,
    )
    result = search(config, log=lambda line: print(line, flush=True))
    wall = time.time() - start
    trials = result.study.get_trials()
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    trained = [t for t in trials if t.user_attrs.get("steps")]
    steps = sum(t.user_attrs["steps"] for t in trained)
    busy = sum(t.user_attrs.get("seconds") or 0 for t in trained)  # trial wall seconds, overlapping when parallel
    return {
        "backend": backend,
        "workers": workers,
        "wall": wall,
        "states": states,
        "steps": steps,
        "busy": busy,
        "trial_s": statistics.median(t.user_attrs["seconds"] for t in trained) if trained else float("nan"),
        "load": load,
        "front": len(result.front),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kjv-lstm-tiny")
    p.add_argument("--budget", default="10x")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--finetune-steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--no-optuna", action="store_true", help="skip the Optuna backend baseline")
    p.add_argument("--runs", default="results/runs/bench-ray-scaling")
    p.add_argument("--out", default="results/ray_scaling.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the Optuna baseline trains in this process: one thread, as each Ray worker
    rows = [] if args.no_optuna else [measure(args, "optuna", 1)]
    rows += [measure(args, "ray", w) for w in args.workers]
    ray_one = next((r for r in rows if r["backend"] == "ray" and r["workers"] == 1), None)
    command = (
        f"python -m autoshrink.bench.ray_scaling --model {args.model} --budget {args.budget} "
        f"--trials {args.trials} --finetune-steps {args.finetune_steps} --seed {args.seed} "
        f"--workers {' '.join(map(str, args.workers))}" + (" --no-optuna" if args.no_optuna else "")
    )
    lines = [
        f"## Ray backend: wall time against workers ({args.model}, budget {args.budget}, {args.trials} trials)",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}, "
        f"commit {commit()}, `{command}`. One torch thread per trial. The machine's cores are shared "
        "with other jobs: the load average at the start of each run is given, and timings are noisy.",
        "",
        "| backend | workers | wall s | speed-up vs ray 1 | states (complete/pruned/fail) | steps trained "
        "| steps / wall s | median trial s | trials running at once (sum of trial s / wall s) | load avg at start |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speedup = f"{ray_one['wall'] / r['wall']:.2f}x" if ray_one else "-"
        s = r["states"]
        lines.append(
            f"| {r['backend']} | {r['workers']} | {r['wall']:.1f} | {speedup} | "
            f"{s['COMPLETE']}/{s['PRUNED']}/{s['FAIL']} | {r['steps']} | {r['steps'] / r['wall']:.2f} | "
            f"{r['trial_s']:.1f} | {r['busy'] / r['wall']:.2f} | {r['load']:.2f} |"
        )
    lines += [
        "",
        "Wall time includes loading the model and data and, for Ray, starting a local Ray (about 10 s "
        "here) and one worker process per concurrent trial (actors are reused between trials). Both backends "
        "stop trials by successive halving at the same rungs, but Tune's ASHA (Ray) ranks perplexity alone "
        "while the Optuna backend compares a trial only with plans of no larger size. So the runs "
        "train different numbers of steps; steps / wall s compares throughput. Trials running at once shows "
        "whether trials overlapped; the speed-up shows whether the machine had free cores for them.",
        "",
    ]
    write_report(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
