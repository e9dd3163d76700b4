"""Does a short per-site fine-tune change what the profile allocates? (issue 15: "a short per-site
fine-tune ... measured whether it changes the ranking").

    python -m autoshrink.bench.trained_profile RUN_DIR [--steps 20] [--out results/trained_profile.md]

RUN_DIR is a search's run folder with its allocation (profile.csv, allocation.json, study.db): the
benchmark's `results/runs/bench/<row>/autoshrink/search`. Its options are profiled again, each
site alone, with `--steps` Adam steps on that site's own tensors before the measurement
(allocate/finetune.py), for every method; the knapsack and the joint refinement then allocate the
same limit over that profile (allocation.json of RUN_DIR/trained-profile-<steps>). Then three
plans train as fresh trials with the run's settings (steps, learning rate, seed, validation
slice), in this process, one after another: the run's own allocation, the allocation over the
fine-tuned profile, and the run's best uniform control. The report gives, per site, the rank
correlation of each option's loss untrained and fine-tuned, and the three trials' perplexities.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from autoshrink.bench.correlation import spearman
from autoshrink.bench.report import commit, write_report
from autoshrink.search import run_folder
from autoshrink.search.allocation import allocation
from autoshrink.search.config import SearchConfig
from autoshrink.search.controller import SearchContext
from autoshrink.search.prepare import calibration, load_inputs, target
from autoshrink.search.study import load_study, origin_of
from autoshrink.search.trial import TrialSettings, run_trial, val_slice

KEY = ["site", "knobs"]


def context(run_dir: Path, steps: int, log) -> tuple[SearchContext, dict]:
    """The run's search context (model, data, space, limit, calibration) with the profile's
    per-site fine-tune set to `steps`, and its run.json."""
    info = run_folder.read_run(run_dir)
    recorded = run_folder.recorded_settings(run_dir) or {}
    c = SearchConfig(budget=info["budget"], run_dir=run_dir).resolved(recorded, run_dir)
    inputs = load_inputs(c, target(c), recorded, log)
    settings = TrialSettings(
        finetune_steps=info["finetune_steps"],
        lr=info.get("trial_lr", TrialSettings.lr),
        eval_tokens=info.get("eval_tokens", TrialSettings.eval_tokens),
        halving=1,
        seed=c.seed,
    )
    ctx = SearchContext(
        model=inputs.dense,
        data=inputs.data,
        sites=inputs.sites,
        space=inputs.space,
        budget=target(c).budget,
        dense_bytes=inputs.dense_bytes,
        settings=settings,
        freqs=inputs.freqs,
        max_bytes=inputs.max_bytes,
        model_file=inputs.model_file,
        stats=calibration(inputs, c.calibration_tokens, log),
        profile_finetune=steps,
    )
    return ctx, info


def ranking_change(untrained: pd.DataFrame, tuned: pd.DataFrame) -> list[dict]:
    """Per site: how many options both profiles measured, the Spearman correlation of their
    losses, and the median ratio of fine-tuned to untrained loss increase."""
    both = untrained[untrained.finetune_steps == 0].merge(tuned, on=KEY, suffixes=("_0", "_t"))
    rows = []
    for site, g in both.groupby("site", sort=False):
        ratio = (g.loss_delta_t / g.loss_delta_0.where(g.loss_delta_0 > 0)).median()
        rows.append(
            {
                "site": site,
                "options": len(g),
                "spearman": spearman(list(g.loss_delta_0), list(g.loss_delta_t)) if len(g) >= 3 else float("nan"),
                "median_ratio": float(ratio),
            }
        )
    return rows


def uniform_control(run_dir: Path) -> tuple[str, dict] | None:
    """(origin, plan) of the run's uniform control with the lowest trial perplexity."""
    done = [
        t
        for t in load_study(run_dir).get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and t.user_attrs.get("feasible") and (origin_of(t) or "").startswith("uniform ")
    ]
    if not done:
        return None
    best = min(done, key=lambda t: t.user_attrs["val_ppl"])
    return origin_of(best), best.user_attrs["plan"]


def trial_ppl(ctx: SearchContext, plan: dict, path: Path, log) -> dict:
    """One fresh trial of `plan` with the run's settings; read back from `path` when measured for
    this plan (the run's best control may have changed since)."""
    if path.is_file() and (known := json.loads(path.read_text())).get("plan") == plan:
        return known
    from autoshrink.plan import parse_plan

    start = time.time()
    result = run_trial(ctx.model, parse_plan(plan), ctx.data, ctx.settings, ctx.dense_bytes, stats=ctx.stats)
    row = {"val_ppl": result.val_ppl, "stored_bytes": result.stored_bytes, "seconds": time.time() - start, "plan": plan}
    path.write_text(json.dumps(row, indent=1) + "\n")
    log(f"{path.stem}: val ppl {result.val_ppl:.2f}")
    return row


def trials_text(steps: int, lr: float, seed: int, eval_tokens: int | None) -> str:
    """How the reports' trials were run, in one sentence."""
    return (
        f"Trials: {steps} steps at lr {lr:g}, seed {seed}, validation on the {val_slice(eval_tokens)}, "
        "each fresh from the data-aware build."
    )


def plan_text(plan: dict) -> str:
    """Each site's method, size knob and storage bits, on one line."""

    def one(cfg: dict) -> str:
        size = next((f"{k}={cfg[k]:.3g}" for k in ("rank", "density", "pool") if k in cfg), "")
        return f"{cfg['method']} {size} {cfg.get('bits', 32)}b".replace("  ", " ")

    return "; ".join(f"{site}: {one(cfg)}" for site, cfg in plan.items())


def measure(run_dir: Path, steps: int, log=print) -> dict:
    ctx, info = context(run_dir, steps, log)
    out = run_dir / f"trained-profile-{steps}"
    out.mkdir(exist_ok=True)
    untrained_alloc = json.loads((run_dir / run_folder.ALLOCATION).read_text())
    start = time.time()
    tuned = allocation(ctx, out, log, strict=True)
    profile_seconds = time.time() - start
    plans = {"allocation, untrained profile": untrained_alloc["best"]["plan"]}
    plans[f"allocation, profile after {steps} per-site steps"] = {
        site: cfg.to_dict() for site, cfg in tuned.best.plan.items()
    }
    control = uniform_control(run_dir)
    if control is not None:
        plans[f"best uniform control ({control[0]})"] = control[1]
    trials = {name: trial_ppl(ctx, plan, out / f"trial-{i}.json", log) for i, (name, plan) in enumerate(plans.items())}
    return {
        "run_dir": str(run_dir),
        "info": info,
        "steps": steps,
        "ranking": ranking_change(pd.read_csv(run_dir / run_folder.PROFILE), tuned.table),
        "plans": plans,
        "trials": trials,
        "profile_seconds": profile_seconds,
        "settings": ctx.settings,
    }


def markdown(m: dict, command: str) -> str:
    s, info = m["settings"], m["info"]
    lines = [
        f"## Per-site fine-tune in the profile: {info['model']} under {info['budget']} (`{m['run_dir']}`)",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `{command}`. Every profiled option measured again after "
        f"{m['steps']} Adam steps on its site's own tensors (each site alone, the rest dense); allocation over that "
        f"profile ({m['profile_seconds'] / 60:.1f} min for profile and allocation). "
        + trials_text(s.finetune_steps, s.lr, s.seed, s.eval_tokens),
        "",
        "| site | options | Spearman (untrained vs fine-tuned loss) | median fine-tuned / untrained loss |",
        "|---|---:|---:|---:|",
        *(f"| {r['site']} | {r['options']} | {r['spearman']:+.2f} | {r['median_ratio']:.2f} |" for r in m["ranking"]),
        "",
        "| plan | stored bytes | trial val ppl | per site |",
        "|---|---:|---:|---|",
    ]
    for name, plan in m["plans"].items():
        t = m["trials"][name]
        lines.append(f"| {name} | {t['stored_bytes']:,} | {t['val_ppl']:.2f} | {plan_text(plan)} |")
    ppl = {name: t["val_ppl"] for name, t in m["trials"].items()}
    tuned = next(n for n in ppl if n.startswith("allocation, profile after"))
    best = min(ppl, key=ppl.get)
    lines += [
        "",
        f"Lowest trial perplexity: **{best}** ({ppl[best]:.2f}); the fine-tuned profile's allocation "
        + ("is that plan." if best == tuned else f"is {ppl[tuned] / ppl[best] - 1:+.1%} from it."),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autoshrink.bench.trained_profile",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=20, help="per-site fine-tune steps before each measurement")
    p.add_argument("--out", default="results/trained_profile.md")
    args = p.parse_args(argv)
    m = measure(Path(args.run_dir), args.steps, log=lambda line: print(line, file=sys.stderr, flush=True))
    command = f"python -m autoshrink.bench.trained_profile {args.run_dir} --steps {args.steps}"
    write_report(args.out, markdown(m, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
