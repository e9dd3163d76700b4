"""How close does one change to the converged recipe bring a row's plans to the dense control?
The converged tier's entrants (the dense control, autoshrink, best uniform) trained again with a
longer cap or another distillation weight, held against the tier's entrants
(results/bench-records/converged/) and against the dense control trained alike; the compass's
goal for the row (GOALS: 1% at 25x) and whether autoshrink still beats the best uniform plan
trained the same way are computed from the table.

    python -m autoshrink.bench.compass --entrants dense autoshrink best-uniform --distill-weight 0.25
                                            # trains what is missing (resumable), then the report
    python -m autoshrink.bench.compass --epochs 6 --entrants autoshrink [--row 25x]
    python -m autoshrink.bench.compass --train-seed 1 --entrants dense autoshrink   # another seed
    python -m autoshrink.bench.compass [FINAL_DIR ...]          # the report alone

Trainings land in results/runs/compass/<row>/<entrant>-e<epochs>-w<weight>[-s<seed>]/ (train_entrant with
the converged tier's Setup, one thing changed; every such folder is reported). A FINAL_DIR is an
`autoshrink train` export (metrics.json, plan.json) of an entrant's plan, e.g.

    autoshrink train results/runs/bench/25x/autoshrink/search --trial 2 --epochs 6 --evals 24 \\
        --no-trial-weights --distill-weight 0.5 --out results/runs/compass-25x-6ep

Each row names what differs from its entrant's training (cap, distillation weight, lr, or
another plan).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from autoshrink.bench.reference import (
    BEST_UNIFORM,
    CONVERGED_DISTILL_WEIGHT,
    CONVERGED_EPOCHS,
    CONVERGED_ROWS,
    QUICK_STEPS,
    SEARCH_FINETUNE_STEPS,
    SEARCH_TRIALS,
    WORKS,
    result_of,
)
from autoshrink.bench.reference_report import GOALS, SEARCH_GOAL, increase_text
from autoshrink.bench.report import commit, write_report
from autoshrink.errors import UserError, read_user_json

WORK = Path("results/runs/compass")
ENTRANTS = ("dense", "autoshrink", BEST_UNIFORM)  # the dense control's plan is {}


def variant_dir(row: str, entrant: str, epochs: float, weight: float, work: Path = WORK, seed: int = 0) -> Path:
    return work / row / (f"{entrant}-e{epochs:g}-w{weight:g}" + (f"-s{seed}" if seed else ""))


def train_variant(setup, row: str, entrant: str, plan: dict, work: Path = WORK) -> Path:
    """Train `plan` (the entrant's) with `setup`'s recipe into its variant folder; a finished one is kept."""
    from autoshrink.bench.reference import train_entrant

    epochs, weight, seed = setup.converged_epochs, setup.distill_weight, setup.training_seed
    out = variant_dir(row, entrant, epochs, weight, work, seed)
    if not (out / "bench.json").is_file():
        label = f"{row} {entrant} ({epochs:g} epochs, w {weight:g}" + (f", seed {seed})" if seed else ")")
        train_entrant(setup, plan, out, label, {})
    return out


def _entrant(work: Path, row: str, entrant: str) -> dict | None:
    """A converged entrant's result: the dense control is the tier's, not a row's."""
    return result_of(work, "dense" if entrant == "dense" else row, entrant)


def _result(folder: Path) -> dict:
    """A variant's bench.json, or an `autoshrink train` export's metrics.json and plan.json, as one record."""
    if (folder / "bench.json").is_file():
        r = read_user_json(folder / "bench.json")
        r["commits"] = [r.get("commit")]
    elif (folder / "metrics.json").is_file():
        r = {**read_user_json(folder / "metrics.json"), "plan": read_user_json(folder / "plan.json")}
    else:
        raise UserError(f"{folder} is neither a compass training nor an `autoshrink train` export (no metrics.json)")
    return {**r, "cap": f"{r['steps_cap']:,} steps"}


def _weight(r: dict) -> float:
    return r.get("distill_weight", CONVERGED_DISTILL_WEIGHT if r.get("distill") else 0.0)


def _changes(r: dict, entrant: dict) -> list[str]:
    """What a training changed of its entrant's recipe (distilled at CONVERGED_DISTILL_WEIGHT), apart
    from its cap; for another plan, of the tier's recipe (the dense control's)."""
    notes = [f"lr {r.get('lr')}"] if r.get("lr") != entrant.get("lr") else []
    if r.get("seed", 0) != entrant.get("seed", 0):
        notes.append(f"training seed {r.get('seed', 0)}")
    weight = _weight(r)
    if weight != CONVERGED_DISTILL_WEIGHT:
        notes.append(f"distillation weight {weight:g}" if weight else "not distilled")
    return notes


def markdown(row: str, folders: list[Path], command: str, work: Path = WORKS["converged"]) -> str:
    entrants = {e: _entrant(work, row, e) for e in ENTRANTS}
    dense = entrants["dense"]
    if dense is None or entrants["autoshrink"] is None:
        missing = "the dense control" if dense is None else f"the {row} autoshrink entrant"
        raise UserError(f"the converged tier has no result for {missing} (python -m autoshrink.bench --tier converged)")
    entrants = {e: r for e, r in entrants.items() if r is not None and "test_ppl" in r}
    if "autoshrink" not in entrants or "dense" not in entrants:
        raise UserError(f"the converged tier's dense control or {row} autoshrink entrant has no test perplexity")
    runs = []  # (folder, result, the entrant whose plan it trained, what it changed)
    for folder in folders:
        r = _result(folder)
        of = next((e for e, er in entrants.items() if er["plan"] == r["plan"]), None)
        runs.append((folder, r, of, _changes(r, entrants.get(of, dense))))

    def alike(entrant: str, r: dict, changes: list[str]) -> dict | None:
        """The training of `entrant`'s plan with the same changes and cap as `r`, where measured."""
        return next((t[1] for t in runs if t[2] == entrant and t[3] == changes and t[1]["cap"] == r["cap"]), None)

    def control(r: dict, of: str | None, changes: list[str]) -> tuple[float, str]:
        """The dense control trained alike where measured, else the tier's."""
        dense_alike = alike("dense", r, changes)
        if dense_alike is None or of == "dense":
            return dense["test_ppl"], "the dense control"
        return dense_alike["test_ppl"], "the dense control trained alike"

    lines = [
        f"## The {row} plans' final training, one thing changed",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU, commit {commit()}, `{command}`. The converged tier trains every entrant "
        f"to a plateau, at most {CONVERGED_EPOCHS:g} epochs, distilled from the dense model (lr 5e-4, cosine decay "
        "to the cap; after 3 validations without improvement the lr cools down to zero over a fifth of the cap; "
        f"(1 - w) CE + w KL with w {CONVERGED_DISTILL_WEIGHT:g}). The rows below the entrants trained an entrant's plan "
        "with the same recipe but what they name and their cap; each is held against the dense control trained "
        "alike where that was measured (marked *), else the tier's. Test perplexity over the whole test split.",
        "",
        "| training | plan of | cap | steps (stopped by) | val ppl (kept state) | test ppl | vs dense control | code |",
        "|---|---|---|---|---:|---:|---:|---|",
        f"| dense control (converged tier) | - | {CONVERGED_EPOCHS:g} epochs | {dense['steps']:,} "
        f"({dense.get('stopped') or 'steps'}) | {dense['val_ppl']:.2f} | {dense['test_ppl']:.2f} | +0.0% | "
        f"{dense.get('commit', '?')} |",
    ]
    for name, r in entrants.items():
        if name == "dense":
            continue
        lines.append(
            f"| {row} {name} entrant | {name} | {CONVERGED_EPOCHS:g} epochs | {r['steps']:,} "
            f"({r.get('stopped') or 'steps'}) | {r['val_ppl']:.2f} | {r['test_ppl']:.2f} | "
            f"{increase_text(r['test_ppl'], dense['test_ppl'])} | {r.get('commit', '?')} |"
        )
    for folder, r, of, changes in runs:
        base, which = control(r, of, changes)
        code = ", ".join(sorted({c or "?" for c in r.get("commits", [])})) or "not recorded"
        named = ([] if of else ["another plan"]) + changes
        lines.append(
            f"| `{folder}`" + (f" ({', '.join(named)})" if named else "") + f" | {of or '-'} | {r['cap']} | "
            f"{r['steps']:,} ({r.get('stopped') or 'steps'}) | {r['val_ppl']:.2f} | {r['test_ppl']:.2f} | "
            f"{increase_text(r['test_ppl'], base)}{' *' if which.endswith('alike') else ''} | {code} |"
        )
    lines.append("")
    goal = GOALS[row]
    ours = entrants["autoshrink"]
    increase = 100 * (ours["test_ppl"] / dense["test_ppl"] - 1)
    lines.append(
        f"- The {row} autoshrink entrant ({CONVERGED_EPOCHS:g} epochs): test {ours['test_ppl']:.2f}, {increase:+.1f}% "
        f"over the dense control ({dense['test_ppl']:.2f}): within {goal:g}% (the compass's goal at {row}): "
        f"**{'yes' if increase <= goal else 'no'}**"
    )
    for folder, r, of, changes in runs:
        if of != "autoshrink":
            continue
        base, which = control(r, of, changes)
        increase = 100 * (r["test_ppl"] / base - 1)
        lines.append(
            f"- `{folder}` ({', '.join(changes + [r['cap']])}): test {r['test_ppl']:.2f} against the entrant's "
            f"{entrants['autoshrink']['test_ppl']:.2f} ({r['test_ppl'] - entrants['autoshrink']['test_ppl']:+.2f}); "
            f"{increase:+.1f}% over {which} ({base:.2f}): within {goal:g}% (the compass's goal at {row}): "
            f"**{'yes' if increase <= goal else 'no'}**"
        )
    for folder, r, of, changes in runs:  # autoshrink against the best uniform plan trained alike
        twin = alike(BEST_UNIFORM, r, changes)
        if of != "autoshrink" or twin is None:
            continue
        base = control(r, of, changes)[0]
        ours, theirs = r["test_ppl"] / base - 1, twin["test_ppl"] / base - 1
        ratio = f"{ours / theirs:.2f}x" if theirs > 0 else "-"
        lines.append(
            f"- Trained alike ({', '.join(changes + [r['cap']])}): autoshrink {100 * ours:+.1f}%, best uniform "
            f"{100 * theirs:+.1f}%: beats it: **{'yes' if ours < theirs else 'no'}**; its increase is {ratio} the "
            f"best uniform's (issue 15: at most {SEARCH_GOAL:g}x): **{'yes' if theirs > 0 and ours <= SEARCH_GOAL * theirs else 'no'}**"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="*", type=Path, metavar="FINAL_DIR", help="`autoshrink train` exports to include")
    p.add_argument("--row", default="25x", choices=[r for r in CONVERGED_ROWS if r in GOALS], help="[25x]")
    p.add_argument(
        "--entrants", nargs="+", default=[], choices=ENTRANTS, help="train these entrants' plans with the change"
    )
    p.add_argument("--epochs", type=float, default=CONVERGED_EPOCHS, help=f"the cap [{CONVERGED_EPOCHS:g}]")
    p.add_argument(
        "--distill-weight",
        type=float,
        default=CONVERGED_DISTILL_WEIGHT,
        help=f"w in (0, 1] [{CONVERGED_DISTILL_WEIGHT:g}]",
    )
    p.add_argument("--train-seed", type=int, default=0, help="the seed of the trainings (init, batches, dropout) [0]")
    p.add_argument("--model", default="kjv-lstm", help="the reference model [kjv-lstm]")
    p.add_argument("--data", default="kjv", help="its corpus [kjv]")
    p.add_argument("--out", help="the report [results/compass-<row>.md]")
    p.add_argument("--work", type=Path, default=WORKS["converged"], help=f"the converged tier [{WORKS['converged']}]")
    p.add_argument("--runs", type=Path, default=WORK, help=f"where the trainings land [{WORK}]")
    args = p.parse_args(argv)
    command = "python -m autoshrink.bench.compass " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        if not 0 < args.distill_weight <= 1 or args.epochs <= 0:
            raise UserError(
                f"--distill-weight must be in (0, 1] and --epochs > 0, got {args.distill_weight}, {args.epochs}"
            )
        if args.entrants:
            from autoshrink.bench.reference import Setup

            setup = Setup(
                args.model,
                QUICK_STEPS,
                SEARCH_TRIALS,
                SEARCH_FINETUNE_STEPS,
                WORKS["quick"],
                data=args.data,
                tier="converged",
                converged_work=args.work,
                converged_epochs=args.epochs,
                distill_weight=args.distill_weight,
                train_seed=args.train_seed or None,
            )
            for entrant in args.entrants:
                r = _entrant(args.work, args.row, entrant)
                if r is None or "plan" not in r:
                    raise UserError(f"the converged tier has no {args.row} {entrant} entrant to take the plan of")
                train_variant(setup, args.row, entrant, r["plan"], args.runs)
        found = sorted(f for f in (args.runs / args.row).glob("*") if (f / "bench.json").is_file())
        text = markdown(args.row, found + args.folders, command.strip(), args.work)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(args.out or f"results/compass-{args.row}.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
