"""Should trials distil? For equal wall time, which trial ranks plans as a fresh final training does.

    python -m autoshrink.bench.trial_distill RUN_DIR [--plans 10] [--steps 300] [--reps 3] [--target-seeds 1]

Over up to `--plans` feasible completed trials of one search run (bench/correlation.py's choice),
each plan is built afresh from the run's data-aware start and trained three ways with the same
seed, successive halving off, validated on the run's slice: a **plain** trial of the run's
`finetune_steps` at its trials' learning rate, a distilled trial of as many steps, and a
**distilled** trial given the same wall time. Its steps = plain steps x plain / distilled seconds
per step, timed by `--reps` back-to-back pairs of the first two trials on every plan (medians),
the ratio taken of the totals over the plans: a search with one trial length spends equal time
on the set. Target: test perplexity after a **fresh** final training of the plan (`train_plan`
from the compressed start, never a trial's kept weights; distilled, `--steps`); with
`--target-seeds K` the mean over training seeds 0..K-1, and the seeds' agreement (the target's
own noise). The report (`--out`, results/trial_distill.md) gives each signal's Spearman
correlation with the target and a verdict generated from the rows. Resumable: the timings go to
RUN/trial_distill/timing.json plan by plan, each plan's figures to RUN/trial_distill/<n>.json as
they are measured, each final training to RUN/trial_distill/final-<n>[-seed<s>].
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from autoshrink.bench.correlation import RunSetup, chosen_trials, load_setup, spearman
from autoshrink.bench.report import commit, write_report
from autoshrink.errors import UserError
from autoshrink.final.train import train_plan
from autoshrink.plan import parse_plan
from autoshrink.search import run_folder
from autoshrink.search.study import load_study
from autoshrink.search.trial import TrialResult, TrialSettings, run_trial, val_slice

# With about 10 plans a smaller Spearman difference is not decisive: the verdict says "within noise".
NOISE = 0.15
WORK = "trial_distill"  # RUN/<this>: the figures as measured, the final trainings
BOOTSTRAP = 1000  # resamples of the plans for the difference's interval
SIGNALS = {  # row key -> the report's name for it
    "proxy_ppl": "proxy (untrained)",
    "plain_ppl": "plain trial",
    "distilled_equal_time_ppl": "distilled trial, equal time",
    "distilled_equal_steps_ppl": "distilled trial, equal steps",
    "search_trial_ppl": "the search's own recorded trial (halving, its lr)",
}


def trial_lr(info: dict) -> float:
    return info.get("trial_lr", TrialSettings.lr)


def fresh_trial(setup: RunSetup, plan_json: dict, steps: int, distill: bool) -> TrialResult:
    """One trial of the plan from its data-aware start, halving off, the run's lr and slice, seed 0."""
    settings = TrialSettings(
        finetune_steps=steps, lr=trial_lr(setup.info), halving=1, eval_tokens=setup.eval_tokens, distill=distill
    )
    return run_trial(
        setup.dense, parse_plan(plan_json), setup.lm, settings, setup.info["dense_bytes"], stats=setup.stats
    )


def time_trials(setup: RunSetup, plan_json: dict, steps: int, reps: int) -> dict:
    """`reps` back-to-back pairs of a plain and a distilled trial of `steps` steps in this process
    (the pair's order alternates, so neither always runs on a warmer cache): fine-tuning seconds per
    step (validation excluded) and validation perplexities of each."""
    out = {f"{kind}_{what}": [] for kind in ("plain", "distilled") for what in ("s_per_step", "ppl")}
    for rep in range(reps):
        for distill in (False, True) if rep % 2 == 0 else (True, False):
            result = fresh_trial(setup, plan_json, steps, distill)
            kind = "distilled" if distill else "plain"
            out[f"{kind}_s_per_step"].append(result.finetune_seconds / result.steps)
            out[f"{kind}_ppl"].append(result.val_ppl)
    return {**out, "commit": commit()}


def equal_time_steps(steps: int, timings: list[dict]) -> tuple[float, int]:
    """(plain / distilled seconds per step, the distilled trial's steps that take as long as `steps`
    plain ones). The teacher costs the same for every plan while the students do not, so the ratio
    is of totals over the plans (each plan's median): a search with one trial length spends the
    same time on the whole set, not on each plan."""
    plain = sum(statistics.median(t["plain_s_per_step"]) for t in timings)
    distilled = sum(statistics.median(t["distilled_s_per_step"]) for t in timings)
    ratio = plain / distilled
    return ratio, max(1, round(steps * ratio))


def final_test_ppl(setup: RunSetup, run_dir: Path, number: int, plan_json: dict, steps: int, seed: int, log) -> float:
    """Test perplexity after a fresh final training of the plan (distilled, from its compressed start)."""
    out = run_dir / WORK / (f"final-{number}" if seed == 0 else f"final-{number}-seed{seed}")
    final = train_plan(
        setup.dense,
        setup.lm,
        plan_json,
        out,
        steps,
        label=number,
        corpus=setup.corpus,
        distill=True,
        seed=seed,
        evals=4,
        info={"run_dir": str(run_dir), "trial": number},
        dense_val_ppl=setup.info.get("dense_val_ppl"),
        log=log,
        calibration_tokens=setup.calibration_tokens,
    )
    return final.metrics["test_ppl"]


def target(row: dict) -> float:
    """The plan's test perplexity after final training: the mean over the training seeds measured."""
    return statistics.mean([row["test_ppl"], *row.get("test_ppl_more_seeds", {}).values()])


def measure(
    run_dir: Path, plans: int, steps: int, reps: int = 3, target_seeds: int = 1, log=print
) -> tuple[dict, list[dict]]:
    """(the timings by trial number, one row per plan); see the module docstring."""
    info = run_folder.read_run(run_dir)
    chosen = chosen_trials(load_study(run_dir), plans)
    if not chosen:
        raise UserError(f"{run_dir}: no feasible completed trial to measure")
    work = run_dir / WORK
    work.mkdir(exist_ok=True)
    trial_steps, setup = info["finetune_steps"], None
    timing_path = work / "timing.json"
    timings = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    for t in chosen:
        if str(t.number) not in timings:
            setup = setup or load_setup(info)
            timings[str(t.number)] = time_trials(setup, t.user_attrs["plan"], trial_steps, reps)
            timing_path.write_text(json.dumps(timings, indent=1) + "\n")
            log(f"trial {t.number}: timed {reps} plain / distilled pairs of {trial_steps} steps")
    timings = {n: timings[str(n)] for n in (t.number for t in chosen)}
    ratio, distilled_steps = equal_time_steps(trial_steps, list(timings.values()))
    log(f"plain / distilled seconds per step {ratio:.3f}: distilled trials of {distilled_steps} steps")
    rows = []
    for t in chosen:
        path = work / f"{t.number}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            continue
        setup = setup or load_setup(info)
        plan, timed = t.user_attrs["plan"], timings[t.number]
        equal_time = fresh_trial(setup, plan, distilled_steps, distill=True)
        log(
            f"trial {t.number}: plain {timed['plain_ppl'][0]:.2f}, distilled {equal_time.val_ppl:.2f} (equal time), "
            f"{timed['distilled_ppl'][0]:.2f} (equal steps); fresh final training {steps} steps"
        )
        row = {
            "trial": t.number,
            "stored_bytes": t.user_attrs["stored_bytes"],
            "proxy_ppl": setup.proxy_ppl(plan),
            "plain_ppl": timed["plain_ppl"][0],
            "distilled_equal_time_ppl": equal_time.val_ppl,
            "distilled_equal_steps_ppl": timed["distilled_ppl"][0],
            "search_trial_ppl": t.user_attrs["val_ppl"],
            "test_ppl": final_test_ppl(setup, run_dir, t.number, plan, steps, seed=0, log=log),
            "plain_steps": trial_steps,
            "distilled_steps": distilled_steps,
            "plain_seconds": statistics.median(timed["plain_s_per_step"]) * trial_steps,
            "distilled_equal_time_seconds": equal_time.finetune_seconds,
            "final_steps": steps,
            "commit": commit(),
        }
        path.write_text(json.dumps(row, indent=1) + "\n")
        rows.append(row)
    for row in rows:  # more training seeds: the target's own noise, and a steadier target
        more = row.setdefault("test_ppl_more_seeds", {})
        for seed in range(1, target_seeds):
            if str(seed) not in more:
                setup = setup or load_setup(info)
                plan = next(t.user_attrs["plan"] for t in chosen if t.number == row["trial"])
                more[str(seed)] = final_test_ppl(setup, run_dir, row["trial"], plan, steps, seed, log)
                (work / f"{row['trial']}.json").write_text(json.dumps(row, indent=1) + "\n")
    return timings, rows


def difference_interval(rows: list[dict], seed: int = 0) -> tuple[float, float]:
    """90% bootstrap interval (plans resampled) of Spearman(distilled, test) - Spearman(plain, test)."""
    rng = np.random.default_rng(seed)
    test = np.array([target(r) for r in rows])
    plain = np.array([r["plain_ppl"] for r in rows])
    distilled = np.array([r["distilled_equal_time_ppl"] for r in rows])
    diffs = []
    with warnings.catch_warnings():  # a resample of one repeated plan has no rank correlation (NaN, skipped)
        warnings.simplefilter("ignore")
        for _ in range(BOOTSTRAP):
            i = rng.integers(0, len(rows), len(rows))
            diffs.append(spearman(list(distilled[i]), list(test[i])) - spearman(list(plain[i]), list(test[i])))
    lo, hi = np.nanpercentile(diffs, [5, 95])
    return float(lo), float(hi)


def verdict(rows: list[dict]) -> str:
    """Which trial signal ranks the plans better at equal time, and whether the difference decides it."""
    if len(rows) < 3:
        return f"Verdict: none ({len(rows)} plans; a rank correlation needs at least 3)."
    test = [target(r) for r in rows]
    plain = spearman([r["plain_ppl"] for r in rows], test)
    distilled = spearman([r["distilled_equal_time_ppl"] for r in rows], test)
    diff = distilled - plain
    lo, hi = difference_interval(rows)
    figures = (
        f"Spearman with the test perplexity {distilled:+.2f} distilled (equal time) against {plain:+.2f} plain, "
        f"difference {diff:+.2f} (90% bootstrap interval over the plans {lo:+.2f} to {hi:+.2f}; {len(rows)} plans)"
    )
    if abs(diff) < NOISE or lo <= 0 <= hi:
        return (
            f"Verdict: **within noise** — {figures}. The difference is below {NOISE} or its interval holds 0: "
            "this does not decide whether trials should distil."
        )
    better, worse = ("distilled", "plain") if diff > 0 else ("plain", "distilled")
    return f"Verdict: **{better} trials rank plans better than {worse} ones at equal time**, by {abs(diff):.2f} — {figures}."


def markdown(timings: dict, rows: list[dict], run_dir: Path, command: str) -> str:
    info = run_folder.read_run(run_dir)
    plain_steps = info["finetune_steps"]
    ratio, distilled_steps = equal_time_steps(plain_steps, list(timings.values()))
    per_step = {
        kind: [statistics.median(t[f"{kind}_s_per_step"]) * 1000 for t in timings.values()]
        for kind in ("plain", "distilled")
    }
    reps = max(len(t["plain_ppl"]) for t in timings.values())
    # repeated identical trials: how far their validations differ (0 when training is deterministic)
    spread = max(max(t[k]) / min(t[k]) - 1 for t in timings.values() for k in ("plain_ppl", "distilled_ppl"))
    in_situ = [
        r["plain_seconds"] / r["distilled_equal_time_seconds"] for r in rows if r["distilled_equal_time_seconds"]
    ]
    total = sum(r["plain_seconds"] for r in rows) / max(1e-9, sum(r["distilled_equal_time_seconds"] for r in rows))
    steps_used = ", ".join(str(n) for n in sorted({r["distilled_steps"] for r in rows})) or str(distilled_steps)
    seeds = sorted({k for r in rows for k in r.get("test_ppl_more_seeds", {})}, key=int)
    table = [
        "| trial | stored bytes | proxy: untrained | plain trial | distilled trial, equal time | "
        "distilled trial, equal steps | test ppl after fresh final training |"
        + "".join(f" seed {k} |" for k in seeds)
        + (" target: their mean |" if seeds else ""),
        "|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(seeds) + bool(seeds)),
    ]
    for r in sorted(rows, key=target):
        more = r.get("test_ppl_more_seeds", {})
        table.append(
            f"| {r['trial']} | {r['stored_bytes']:,} | {r['proxy_ppl']:.2f} | {r['plain_ppl']:.2f} | "
            f"{r['distilled_equal_time_ppl']:.2f} | {r['distilled_equal_steps_ppl']:.2f} | {r['test_ppl']:.2f} |"
            + "".join(f" {more[k]:.2f} |" if k in more else " - |" for k in seeds)
            + (f" {target(r):.2f} |" if seeds else "")
        )
    test = [target(r) for r in rows]
    commits = sorted({*(t["commit"] for t in timings.values()), *(r["commit"] for r in rows)})
    lines = [
        f"## Should trials distil? Ranking plans at equal time ({info['model']}, {info['budget']})",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}), one thread, commit(s) {', '.join(commits)}, "
        f"`{command}`. {len(rows)} feasible completed trials of `{run_dir}`, spread over their perplexities. Each plan "
        f"is built afresh (data-aware, seed 0) and trained three ways, halving off, lr {trial_lr(info):g}, validation "
        f"perplexity on the {val_slice(info.get('eval_tokens', TrialSettings.eval_tokens))}: plain for the run's "
        f"{plain_steps} steps; distilled for {steps_used} steps (equal time); distilled for {plain_steps} steps (equal "
        f"steps). Target: test perplexity over the whole test split after a fresh final training "
        f"({rows[0]['final_steps'] if rows else '-'} steps, distilled, from the compressed start, not a trial's weights"
        + (f"; the mean over training seeds 0-{seeds[-1]}" if seeds else "")
        + ").",
        "",
        f"Equal time: {reps} back-to-back pairs of a plain and a distilled {plain_steps}-step trial per plan; per plan "
        f"(median of its pairs) a plain step took {min(per_step['plain']):.0f}-{max(per_step['plain']):.0f} ms, a "
        f"distilled one {min(per_step['distilled']):.0f}-{max(per_step['distilled']):.0f} ms (the teacher's forward "
        f"costs every plan the same, a student's step does not). Ratio of the totals over the {len(timings)} plans "
        f"{ratio:.3f}: {plain_steps} plain steps = {distilled_steps} distilled ones."
        + (
            f" Measured afterwards, plain / distilled (equal time) fine-tuning seconds: {total:.2f} over all plans, "
            f"per plan {min(in_situ):.2f}-{max(in_situ):.2f} (1 = equal time)."
            if in_situ
            else ""
        )
        + f" Repeated identical trials' validation perplexities differed by at most {spread:.2%}.",
        "",
        *table,
        "",
    ]
    if len(rows) >= 3:
        ranks = ", ".join(f"{name} {spearman([r[key] for r in rows], test):+.2f}" for key, name in SIGNALS.items())
        lines += [
            f"Spearman rank correlation with the {'target' if seeds else 'test perplexity'} (higher ranks better): "
            f"{ranks} (over {len(rows)} plans"
            + ("" if len(rows) >= 8 else "; fewer than the 8 the issue asks for")
            + ").",
            "",
        ]
        complete = [r for r in rows if set(seeds) <= set(r.get("test_ppl_more_seeds", {}))]
        if seeds and len(complete) >= 3:
            repeat = ", ".join(
                f"seed {k} {spearman([r['test_ppl'] for r in complete], [r['test_ppl_more_seeds'][k] for r in complete]):+.2f}"
                for k in seeds
            )
            lines += [
                f"The target's own noise: Spearman of the seed-0 test perplexities with those of another training seed: "
                f"{repeat} (over {len(complete)} plans). No cheap signal can rank the plans more surely than the final "
                "training ranks them against itself.",
                "",
            ]
    lines.append(verdict(rows))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autoshrink.bench.trial_distill",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir")
    p.add_argument("--plans", type=int, default=10)
    p.add_argument("--steps", type=int, default=300, help="fresh final-training steps of every plan")
    p.add_argument("--reps", type=int, default=3, help="back-to-back plain/distilled trial pairs timed per plan")
    p.add_argument(
        "--target-seeds",
        type=int,
        default=1,
        help="final trainings per plan (seeds 0, 1, ...): the target is their mean",
    )
    p.add_argument("--out", default="results/trial_distill.md")
    args = p.parse_args(argv)
    if min(args.plans, args.steps, args.reps, args.target_seeds) < 1:
        raise UserError(
            "--plans, --steps, --reps and --target-seeds must be >= 1, got "
            f"{args.plans}, {args.steps}, {args.reps}, {args.target_seeds}"
        )
    run_dir = Path(args.run_dir)
    timings, rows = measure(
        run_dir, args.plans, args.steps, args.reps, args.target_seeds, log=lambda line: print(line, flush=True)
    )
    command = (
        f"python -m autoshrink.bench.trial_distill {args.run_dir} --plans {args.plans} --steps {args.steps} "
        f"--reps {args.reps} --target-seeds {args.target_seeds}"
    )
    write_report(args.out, markdown(timings, rows, run_dir, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
