"""Per-site storage widths against uniform ones, fairly: the search over search_spaces/mixed-width.yaml
(3-bit low-rank and GroupReduce allowed on the vocabulary matrices) against uniform data-aware
low-rank at 3 and at 4 bits, at one budget of the reference model. Each plan gets a trial (80
steps, the search's settings) and the benchmark's quick-tier final training (200 steps, 5
validations, no distillation), and is compared with the quick tier's dense control.

    python -m autoshrink.bench.mixed_width [--budget 100x] [--run-dir results/runs/mixed-width-100x] \
        [--bench-work results/runs/bench] [--space search_spaces/mixed-width.yaml] [--out results/mixed_width.md]

--space measures another space's allocation (search_spaces/lstm-only-mixed-width.yaml at lstm-25x:
results/mixed_width-lstm-25x.md); the uniform plans then compress only the roles that space names.

Resumable: the search resumes, each trial is read back from its JSON, each training from its
checkpoint. The dense control is read from the benchmark's quick tier (`python -m autoshrink.bench`
trains it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from autoshrink.bench.reference import QUICK_EVALS, QUICK_STEPS
from autoshrink.bench.report import commit, write_report
from autoshrink.bench.trained_profile import context, plan_text, trial_ppl, trials_text
from autoshrink.errors import UserError
from autoshrink.methods.lowrank import LowRankConfig
from autoshrink.plan.fit import uniform_plan
from autoshrink.search import run_folder
from autoshrink.search.config import SearchConfig
from autoshrink.search.controller import search
from autoshrink.search.trial import TrialSettings

SPACE = "search_spaces/mixed-width.yaml"


def quick_test_ppl(ctx, plan: dict, out: Path, log) -> float:
    """Test perplexity after the quick tier's final training of `plan` (resumed from `out`)."""
    from autoshrink.final.train import train_plan

    final = train_plan(
        ctx.model, ctx.data, plan, out, QUICK_STEPS, label=out.name, evals=QUICK_EVALS, distill=False,
        options={"patience": None}, log=log,
    )  # fmt: skip
    return float(final.metrics["test_ppl"])


def uniform_lowrank_plans(ctx, widths) -> dict[str, dict]:
    """Uniform data-aware low-rank at each storage width, fitted to the limit over the sites the
    space compresses (a role it leaves out stays dense, as in the allocation's plan)."""
    plans = {}
    for bits in widths:
        fitted = uniform_plan(
            LowRankConfig(bits=bits), ctx.sites, ctx.max_bytes, ctx.freqs, ctx.model_file, roles=set(ctx.space.roles)
        )
        if fitted is not None:  # None: low-rank at this width cannot fit the limit on the space's roles
            plans[f"uniform low-rank, {bits} bits"] = {site: cfg.to_dict() for site, cfg in fitted.items()}
    if not plans:
        raise UserError(
            f"uniform low-rank at {', '.join(map(str, widths))} bits cannot fit the limit on the space's roles"
        )
    return plans


def measure(run_dir: Path, budget: str, space: str = SPACE, log=print) -> dict:
    search(SearchConfig(budget, model="kjv-lstm", data="kjv", space=space, trials=1, finetune_steps=80, seed=0,
                        run_dir=run_dir), log=log)  # fmt: skip
    ctx, info = context(run_dir, 0, log)
    plans = {
        f"allocation over {Path(space).name}": json.loads((run_dir / run_folder.ALLOCATION).read_text())["best"]["plan"]
    }
    plans.update(uniform_lowrank_plans(ctx, (3, 4)))
    rows = []
    for i, (name, plan) in enumerate(plans.items()):
        trial = trial_ppl(ctx, plan, run_dir / f"mixed-width-trial-{i}.json", log)
        test = quick_test_ppl(ctx, plan, run_dir / "quick" / f"plan-{i}", log)
        rows.append({"plan": name, "stored_bytes": trial["stored_bytes"], "trial_val_ppl": trial["val_ppl"],
                     "test_ppl": test, "per_site": plan_text(plan)})  # fmt: skip
    return {"rows": rows, "info": info}


def markdown(m: dict, dense_test: float, command: str) -> str:
    info, rows = m["info"], m["rows"]
    lines = [
        f"## Per-site storage widths against uniform ones ({info['model']}, {info['budget']})",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `{command}`. "
        + trials_text(
            info["finetune_steps"], info.get("trial_lr") or TrialSettings.lr, info["seed"], info.get("eval_tokens")
        )
        + " Final training: the benchmark's quick tier "
        f"({QUICK_STEPS} steps, {QUICK_EVALS} validations, no distillation), test ppl over the whole test split; "
        f"the quick tier's dense control: {dense_test:.2f}.",
        "",
        "| plan | stored bytes | trial val ppl | test ppl after final training | vs dense | per site |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['plan']} | {r['stored_bytes']:,} | {r['trial_val_ppl']:.2f} | {r['test_ppl']:.2f} | "
            f"{100 * (r['test_ppl'] / dense_test - 1):+.1f}% | {r['per_site']} |"
        )
    ours, uniform = rows[0], min(rows[1:], key=lambda r: r["test_ppl"])
    ratio = (ours["test_ppl"] - dense_test) / (uniform["test_ppl"] - dense_test)
    lines += [
        "",
        f"Best uniform plan after final training: {uniform['plan']} ({uniform['test_ppl']:.2f}). The allocation's "
        f"increase over the dense control is **{ratio:.2f}x** the best uniform plan's "
        f"({'within' if ratio <= 0.85 else 'short of'} issue 15's 0.85x).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="100x")
    p.add_argument("--run-dir", default="results/runs/mixed-width-100x")
    p.add_argument(
        "--bench-work", default="results/runs/bench", help="the quick tier's work folder (its dense control)"
    )
    p.add_argument("--space", default=SPACE, help="the search space whose allocation is measured [%(default)s]")
    p.add_argument("--out", default="results/mixed_width.md")
    args = p.parse_args(argv)
    dense = Path(args.bench_work) / "dense" / "bench.json"
    if not dense.is_file():
        p.exit(2, f"{p.prog}: no dense control in {dense}: run `python -m autoshrink.bench --entrants dense` first\n")
    try:
        m = measure(Path(args.run_dir), args.budget, args.space)
    except UserError as e:  # a bad budget or space, or a resume that contradicts its run
        p.exit(2, f"{p.prog}: {e}\n")
    command = "python -m autoshrink.bench.mixed_width " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(args.out, markdown(m, json.loads(dense.read_text())["test_ppl"], command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
