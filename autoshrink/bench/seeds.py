"""Does issue 15's goal hold at other training seeds? The quick tier trains every entrant once, with
training seed 0, and a row's verdict (the searched plan's increase over the dense control at most
0.85x the best uniform plan's) can turn on a few hundredths of perplexity. This trains the quick
tier's dense control, each goal row's autoshrink plan and its best uniform plan (the plans the
tier trained, read from its records) again with the tier's recipe at other training seeds, and
computes the verdict per seed and on the mean increase.

    python -m autoshrink.bench.seeds                          # rows 25x 50x 100x lstm-25x, seeds 1 2
    python -m autoshrink.bench.seeds --rows 100x --seeds 1    # a share of the work
    python -m autoshrink.bench.seeds --report-only            # the report from what has been trained

Trainings land in results/runs/bench-seeds/s<seed>/ (dense/, <row>/<entrant>-<plan digest>/: a
kept training is read back only for the plan it trained, so a quick tier searched again is
trained again, not mixed with older plans), resumable: a finished training is kept, a cut-off one
resumes from its checkpoint. Each finished training's bench.json is also kept in
results/bench-records/seeds/ (committed: the report can be regenerated on a fresh checkout). Seed 0
is the quick tier itself (results/bench-records/quick/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from autoshrink.bench.reference import (
    BEST_UNIFORM,
    QUICK_EVALS,
    QUICK_STEPS,
    RECORDS,
    ROWS,
    SEARCH_FINETUNE_STEPS,
    SEARCH_TRIALS,
    WORKS,
    result_of,
)
from autoshrink.bench.reference_report import SEARCH_GOAL, best_uniform, increase_verdict, is_uniform
from autoshrink.bench.report import commit, plan_digest, write_report
from autoshrink.errors import UserError

WORK = Path("results/runs/bench-seeds")
GOAL_ROWS = ("25x", "50x", "100x", "lstm-25x")  # issue 15's goal rows


def seed_dir(work: Path, seed: int, row: str, entrant: str, plan: dict) -> Path:
    """Where `entrant`'s training of `plan` at training seed `seed` (> 0) lives."""
    return work / f"s{seed}" / ("dense" if row == "dense" else f"{row}/{entrant}-{plan_digest(plan)}")


def record_of(folder: Path, work: Path) -> Path:
    """The committed copy of a seed training's bench.json: RECORDS/seeds/<its path under work>.json."""
    return RECORDS / "seeds" / folder.relative_to(work).with_suffix(".json")


def read_seed(work: Path, seed: int, row: str, entrant: str, plan: dict) -> dict | None:
    folder = seed_dir(work, seed, row, entrant, plan)
    for path in (folder / "bench.json", record_of(folder, work)):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def plans_of(row: str, quick: Path = WORKS["quick"]) -> dict[str, tuple[str, dict]]:
    """{entrant: (label, the quick tier's result)} for `row`: its autoshrink entrant and its best
    uniform plan (the single method with the lowest validation perplexity); each result's plan is
    what the seeds train."""
    auto = result_of(quick, row, "autoshrink")
    best = best_uniform(ROWS[row], quick)
    if auto is None or "plan" not in auto or best is None:
        raise UserError(f"the quick tier has no trained autoshrink and single-method entrants for {row} yet")
    return {"autoshrink": ("autoshrink", auto), BEST_UNIFORM: best}


def train_seed(setup, rows: list[str], work: Path, log=print) -> None:
    """Train the dense control and each row's two plans (those of the quick tier in `setup.work`) at
    `setup`'s training seed; finished trainings are kept."""
    from autoshrink.bench.reference import train_entrant

    seed = setup.training_seed
    jobs = [("dense", "dense", {})] + [
        (row, entrant, r["plan"]) for row in rows for entrant, (_, r) in plans_of(row, setup.work).items()
    ]
    for row, entrant, plan in jobs:
        if read_seed(work, seed, row, entrant, plan) is not None:
            continue
        out = seed_dir(work, seed, row, entrant, plan)
        log(f"seed {seed}: {row} {entrant}")
        train_entrant(setup, plan, out, f"{row} {entrant} (training seed {seed})", {})
        record = record_of(out, work)
        record.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "bench.json", record)


def measured(rows: list[str], seeds: list[int], work: Path, quick: Path = WORKS["quick"]) -> dict:
    """{row: {seed: {dense, autoshrink, best-uniform: test ppl or None}}}, each row's best uniform
    method, and the uniform plan its autoshrink plan is, if it is one (reference_report.is_uniform)."""
    table, methods, uniform = {}, {}, {}
    for row in rows:
        tier = plans_of(row, quick)
        methods[row] = tier[BEST_UNIFORM][0]
        uniform[row] = is_uniform(ROWS[row], quick, tier["autoshrink"][1])
        table[row] = {}
        for seed in seeds:
            if seed == 0:  # the quick tier itself
                got = {e: r for e, (_, r) in tier.items()}
                got["dense"] = result_of(quick, "dense", "dense")
            else:
                got = {e: read_seed(work, seed, row, e, r["plan"]) for e, (_, r) in tier.items()}
                got["dense"] = read_seed(work, seed, "dense", "dense", {})
            table[row][seed] = {e: (r or {}).get("test_ppl") for e, r in got.items()}
    return {"table": table, "methods": methods, "uniform": uniform}


def _verdict(m: dict, row: str, ours: float, theirs: float) -> str:
    uniform = m.get("uniform", {}).get(row)
    return f"no: the uniform {uniform} plan" if uniform else increase_verdict(ours, theirs)


def markdown(m: dict, seeds: list[int], command: str) -> str:
    lines = [
        "## Issue 15's goal at other training seeds (quick tier, kjv-lstm)",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `{command}`. Each row's autoshrink plan and best uniform "
        "plan (the plans the quick tier trained with seed 0) and the dense control trained again with the quick "
        f"tier's recipe ({QUICK_STEPS} steps, {QUICK_EVALS} validations, no distillation) at another training seed (initial batches, "
        "dropout); test perplexity over the whole test split. The goal: the plan's increase over the dense control "
        f"trained with the same seed at most {SEARCH_GOAL:g}x the best uniform plan's.",
        "",
        "| row | training seed | dense control | autoshrink | best uniform | autoshrink increase | best uniform "
        f"increase | <= {SEARCH_GOAL:g}x |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    verdicts = []
    for row, by_seed in m["table"].items():
        method, incs = m["methods"][row], []
        for seed in seeds:
            t = by_seed[seed]
            if None in t.values():
                lines.append(f"| {row} | {seed} | not trained yet | | | | | |")
                continue
            ours, theirs = t["autoshrink"] / t["dense"] - 1, t[BEST_UNIFORM] / t["dense"] - 1
            incs.append((ours, theirs))
            lines.append(
                f"| {row} | {seed} | {t['dense']:.2f} | {t['autoshrink']:.2f} | {method} {t[BEST_UNIFORM]:.2f} | "
                f"{100 * ours:+.2f}% | {100 * theirs:+.2f}% | {_verdict(m, row, ours, theirs)} |"
            )
        if len(incs) == len(seeds):
            every = all(_verdict(m, row, o, t).startswith("yes") for o, t in incs)
            mean_o, mean_t = (sum(x) / len(incs) for x in zip(*incs))
            verdicts.append(
                f"- {row}: within {SEARCH_GOAL:g}x at every seed: **{'yes' if every else 'no'}**; on the mean "
                f"increase over {len(incs)} seeds (autoshrink {100 * mean_o:+.2f}%, best uniform "
                f"{100 * mean_t:+.2f}%): **{_verdict(m, row, mean_o, mean_t)}**"
            )
        else:
            verdicts.append(f"- {row}: {len(seeds) - len(incs)} of {len(seeds)} seeds not trained yet")
    return "\n".join(lines + [""] + verdicts) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(GOAL_ROWS), choices=sorted(ROWS), help="[%(default)s]")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="training seeds besides 0 [1 2]")
    p.add_argument("--model", default="kjv-lstm", help="the reference model [kjv-lstm]")
    p.add_argument("--data", default="kjv", help="its corpus [kjv]")
    p.add_argument("--work", type=Path, default=WORK, help=f"where the trainings land [{WORK}]")
    p.add_argument(
        "--quick", type=Path, default=WORKS["quick"], help=f"the quick tier: its plans, its seed 0 [{WORKS['quick']}]"
    )
    p.add_argument("--report-only", action="store_true", help="train nothing; the report from what is there")
    p.add_argument("--out", default="results/seeds.md", help="[%(default)s]")
    args = p.parse_args(argv)
    if any(s <= 0 for s in args.seeds):
        p.exit(2, f"{p.prog}: --seeds are the seeds besides the quick tier's 0, each > 0, got {args.seeds}\n")
    args.seeds = sorted(set(args.seeds))  # a seed given twice would count twice in the mean
    command = "python -m autoshrink.bench.seeds " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        if not args.report_only:
            from autoshrink.bench.reference import Setup

            for seed in args.seeds:
                setup = Setup(
                    args.model,
                    QUICK_STEPS,
                    SEARCH_TRIALS,
                    SEARCH_FINETUNE_STEPS,
                    args.quick,
                    data=args.data,
                    train_seed=seed,
                )
                train_seed(setup, args.rows, args.work, log=lambda line: print(line, flush=True))
        text = markdown(measured(args.rows, [0, *args.seeds], args.work, args.quick), [0, *args.seeds], command.strip())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
