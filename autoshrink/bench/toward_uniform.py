"""How unequal should the sites' sizes be once trained? The allocation's plan moved part of the way
to a uniform plan's sizes (plan/fit.toward_uniform), each trained with the reference benchmark's
quick tier (200 steps, the same recipe and seed as every entrant) and tested.

    python -m autoshrink.bench.toward_uniform [RUN_DIR] [--row lstm-25x] [--weights 0 0.25 0.5 0.75 1]
                                              [--tier quick|converged] [--no-early-stop]

RUN_DIR is a search's run folder with its allocation.json (default: the benchmark's search of the
row, results/runs/bench/<row>/autoshrink/search); weight 0 is its allocated plan, weight 1 the
uniform sizes with each site's method and knobs kept. `--tier converged` trains them as the
benchmark's converged tier does (to a plateau, at most 3 epochs, distilled); `--no-early-stop`
trains them every step of those 3 epochs (the plateau rule can end a run while the cosine lr is
still near its peak). Each plan trains in
results/runs/toward-uniform[-converged[-full]]/<row>/w<weight>-<plan digest> and is kept there: a rerun reads it back
(an unfinished training resumes from its checkpoint). It measured the search's TOWARD_UNIFORM
(allocate/pipeline.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from autoshrink.allocate.pipeline import TOWARD_UNIFORM
from autoshrink.bench.reference import EXPERIMENTS, QUICK_STEPS, SEARCH_FINETUNE_STEPS, SEARCH_TRIALS
from autoshrink.bench.report import commit, plan_digest, write_report
from autoshrink.bench.trained_profile import plan_text
from autoshrink.errors import UserError

WORKS = EXPERIMENTS  # the benchmark takes its entrants' trainings from here (reference._trained_twin)
FULL = "-full"  # suffix of the folder and report of converged trainings without the plateau stop


def plans_toward_uniform(setup, row, best: dict, weights: list[float]) -> dict[float, dict]:
    """{weight: plan JSON}: `best` (a plan JSON) moved each weight of the way to uniform sizes within the row's limit."""
    from autoshrink.plan.apply import parse_plan, plan_to_json
    from autoshrink.plan.fit import toward_uniform

    plan = parse_plan(best)
    out = {}
    for w in weights:
        moved = toward_uniform(plan, w, setup.sites, setup.max_bytes(row), setup.dense.vocab.freqs, setup.model_file)
        if moved is None:
            raise UserError(f"no plan {w:g} of the way to uniform sizes fits the {row.name} limit")
        out[w] = plan_to_json(moved)
    return out


def plan_folder(weight: float, plan: dict, seed: int = 0) -> str:
    """w<weight>-<digest of the plan>[-seed<seed>]: a kept result is read back only for the plan
    and training seed it was trained with."""
    return f"w{weight:g}-{plan_digest(plan)}" + (f"-seed{seed}" if seed else "")


def measure(setup, row, best: dict, weights: list[float], work: Path = WORKS["quick"]) -> list[dict]:
    """Train (or read back) each weight's plan; one result per weight."""
    from autoshrink.bench.reference import train_entrant

    results = []
    for w, plan in plans_toward_uniform(setup, row, best, weights).items():
        out = work / row.name / plan_folder(w, plan, setup.training_seed)
        done = out / "bench.json"
        r = (
            json.loads(done.read_text())
            if done.is_file()
            else train_entrant(setup, plan, out, f"{row.name} w{w:g}", {})
        )
        kept = ("test_ppl", "val_ppl", "stored_bytes")
        results.append(
            {
                "weight": w,
                "plan": plan,
                **{k: r[k] for k in kept},
                "trained": f"{r.get('steps', '?')} ({r.get('stopped') or 'steps'})",
                "commit": r.get("commit", "?"),
            }
        )
    return results


TRAINING = {
    "quick": "Each trains 200 steps with the reference benchmark's quick-tier recipe (no distillation)",
    "converged": "Each trains as the reference benchmark's converged tier does (until validation stops "
    "improving, then a cooldown of the lr to zero over a fifth of the schedule; at most 3 epochs, distilled from "
    "the dense model; a row measured before commit 63bf1fe stopped at once where that rule fired)",
    "converged" + FULL: "Each trains as the reference benchmark's converged tier does but every step of its "
    "3 epochs, without the plateau stop (distilled from the dense model)",
}


def markdown(row_name: str, results: list[dict], command: str, limit: int, tier: str = "quick", seed: int = 0) -> str:
    lines = [
        f"## The allocation's sizes moved toward a uniform plan's: kjv-lstm, {row_name}, {tier.replace(FULL, '')} tier"
        + (", every step (no plateau stop)" if tier.endswith(FULL) else ""),
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `{command}`. Weight 0 is the allocation's plan "
        "(the knapsack over the untrained profile), weight 1 the uniform sizes (each site the same share "
        "of its dense bytes, its method and knobs kept); every plan fills the limit "
        f"({limit:,} bytes) as closely as its sizes allow. {TRAINING[tier]}, training seed {seed}, and is tested on the whole test split.",
        "",
        "| weight | per site | stored bytes | val ppl | test ppl | steps (ended by) | measured at |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        ppl = f"{r['val_ppl']:.2f} | {r['test_ppl']:.2f}"
        lines.append(
            f"| {r['weight']:g} | {plan_text(r['plan'])} | {r['stored_bytes']:,} | {ppl} | {r['trained']} | {r['commit']} |"
        )
    best = min(results, key=lambda r: r["test_ppl"])
    ends = {r["weight"]: r["test_ppl"] for r in results}
    lines += ["", f"Lowest test perplexity: weight {best['weight']:g} ({best['test_ppl']:.2f})"]
    if 0 in ends and 1 in ends:
        lines[-1] += f"; the allocation's plan {ends[0]:.2f}, the uniform sizes {ends[1]:.2f}"
    lines[-1] += f". The search trains weight {TOWARD_UNIFORM:g} right after the allocation's plan."
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from autoshrink.bench.reference import ROWS, WORK as BENCH_WORK, Setup, entrant_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?", help="a search's run folder (default: the benchmark's search of the row)")
    p.add_argument("--row", default="lstm-25x", choices=sorted(ROWS))
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--tier", default="quick", choices=sorted(WORKS), help="the benchmark tier's training [quick]")
    p.add_argument("--seed", type=int, default=0, help="training seed (every benchmark entrant trains with 0) [0]")
    p.add_argument("--no-early-stop", action="store_true", help="converged tier: train every step, no plateau stop")
    p.add_argument("--out", default=None, help="report (default: results/toward_uniform-<row>[-converged].md)")
    args = p.parse_args(argv)
    row = ROWS[args.row]
    run_dir = Path(args.run_dir) if args.run_dir else entrant_dir(BENCH_WORK, row.name, "autoshrink") / "search"
    allocation = run_dir / "allocation.json"
    if not allocation.is_file():
        print(f"error: no allocation.json in {run_dir}: run the search first", file=sys.stderr)
        return 2
    if any(not 0 <= w <= 1 for w in args.weights):
        print("error: --weights are shares of the way to uniform sizes, between 0 and 1", file=sys.stderr)
        return 2
    if args.no_early_stop and args.tier != "converged":
        print("error: --no-early-stop is for the converged tier (the quick tier never stops early)", file=sys.stderr)
        return 2
    full = FULL if args.no_early_stop else ""
    setup = Setup(
        "kjv-lstm",
        steps=QUICK_STEPS,
        trials=SEARCH_TRIALS,
        finetune_steps=SEARCH_FINETUNE_STEPS,
        work=BENCH_WORK,
        tier=args.tier,
        stop_early=not full,
        train_seed=args.seed,
    )
    try:
        best = json.loads(allocation.read_text())["best"]["plan"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        print(f"error: {allocation} is not an allocation.json ({e})", file=sys.stderr)
        return 2
    try:
        work = WORKS[args.tier]
        results = measure(setup, row, best, sorted(args.weights), work.with_name(work.name + full))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    command = "python -m autoshrink.bench.toward_uniform " + " ".join(argv if argv is not None else sys.argv[1:])
    suffix = ("" if args.tier == "quick" else f"-{args.tier}{full}") + (f"-seed{args.seed}" if args.seed else "")
    report = markdown(row.name, results, command.strip(), setup.max_bytes(row), args.tier + full, args.seed)
    write_report(args.out or f"results/toward_uniform-{row.name}{suffix}.md", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
