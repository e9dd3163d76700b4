"""How close does one change to the converged recipe bring a row's plan to the dense control?
Final trainings of the row's autoshrink plan with a longer cap or another distillation weight,
held against the converged tier's dense control and the same plan's entrant
(results/bench-records/converged/), and the compass's goal for the row (GOALS: 1% at 25x)
checked from the table.

    autoshrink train results/runs/bench/25x/autoshrink/search --trial 2 --epochs 6 --evals 24 \\
        --no-trial-weights --out results/runs/compass-25x-6ep           # 6 epochs instead of 3
    autoshrink train results/runs/bench/25x/autoshrink/search --trial 2 --evals 12 \\
        --no-trial-weights --distill-weight 1 --out results/runs/compass-25x-kd1   # KL alone
    python -m autoshrink.bench.compass results/runs/compass-25x-6ep results/runs/compass-25x-kd1 \\
        [--row 25x] [--out results/compass-25x.md]

Each FINAL_DIR is an `autoshrink train` export (metrics.json, plan.json); its row names what
differs from the entrant's training besides the step cap (another plan, learning rate or
distillation weight).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from autoshrink.bench.reference import CONVERGED_ROWS, WORKS, result_of
from autoshrink.bench.reference_report import GOALS, _increase
from autoshrink.bench.report import commit, write_report
from autoshrink.errors import UserError, read_user_json
from autoshrink.models.training import DEFAULT_DISTILL_WEIGHT


def _final(folder: Path) -> dict:
    """metrics.json and plan.json of an `autoshrink train` export."""
    if not (folder / "metrics.json").is_file():
        raise UserError(f"{folder} is not an `autoshrink train` export (no metrics.json)")
    return {**read_user_json(folder / "metrics.json"), "plan": read_user_json(folder / "plan.json")}


def _differs(final: dict, entrant: dict) -> list[str]:
    """How a final training differs from the entrant's (distilled at DEFAULT_DISTILL_WEIGHT), apart from its cap."""
    notes = []
    if final["plan"] != entrant["plan"]:
        notes.append("another plan")
    if final.get("lr") != entrant.get("lr"):
        notes.append(f"lr {final.get('lr')}")
    weight = final.get("distill_weight", DEFAULT_DISTILL_WEIGHT if final.get("distill") else 0.0)
    if weight != DEFAULT_DISTILL_WEIGHT:
        notes.append(f"distillation weight {weight:g}" if weight else "not distilled")
    return notes


def markdown(row: str, folders: list[Path], command: str, work: Path = WORKS["converged"]) -> str:
    dense = result_of(work, "dense", "dense")
    entrant = result_of(work, row, "autoshrink")
    if dense is None or entrant is None:
        missing = "the dense control" if dense is None else f"the {row} autoshrink entrant"
        raise UserError(f"the converged tier has no result for {missing} (python -m autoshrink.bench --tier converged)")
    finals = {folder: _final(folder) for folder in folders}
    goal = GOALS[row]
    lines = [
        f"## The {row} plan's final training, one thing changed",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU, commit {commit()}, `{command}`. The converged tier trains every entrant "
        "to a plateau, at most 3 epochs, distilled from the dense model (lr 5e-4, cosine decay to the cap; after 3 "
        "validations without improvement the lr cools down to zero over a fifth of the cap; (1 - w) CE + w KL with w "
        f"{DEFAULT_DISTILL_WEIGHT:g}). The rows below the entrant trained its plan with the same recipe but what they "
        "name and their step cap. Test perplexity over the whole test split.",
        "",
        "| training | step cap | steps (stopped by) | val ppl (kept state) | test ppl | vs dense control | code |",
        "|---|---:|---|---|---:|---:|---|",
        f"| dense control (converged tier) | - | {dense['steps']:,} ({dense.get('stopped') or 'steps'}) | "
        f"{dense['val_ppl']:.2f} | {dense['test_ppl']:.2f} | +0.0% | {dense.get('commit', '?')} |",
        f"| {row} autoshrink entrant (3 epochs) | - | {entrant['steps']:,} ({entrant.get('stopped') or 'steps'}) | "
        f"{entrant['val_ppl']:.2f} | {entrant['test_ppl']:.2f} | {_increase(entrant['test_ppl'], dense['test_ppl'])} "
        f"| {entrant.get('commit', '?')} |",
    ]
    for folder, m in finals.items():
        notes = _differs(m, entrant)
        label = f"`{folder}`" + (f" ({', '.join(notes)})" if notes else "")
        code = ", ".join(sorted({c or "?" for c in m.get("commits", [])})) or "not recorded"
        lines.append(
            f"| {label} | {m['steps_cap']:,} | {m['steps']:,} ({m.get('stopped') or 'steps'}) | "
            f"{m['val_ppl']:.2f} | {m['test_ppl']:.2f} | {_increase(m['test_ppl'], dense['test_ppl'])} "
            f"| {code} |"
        )
    lines.append("")
    for folder, m in finals.items():
        increase = 100 * (m["test_ppl"] / dense["test_ppl"] - 1)
        met = "yes" if increase <= goal else "no"
        same = "" if _differs(m, entrant) else " (the entrant's plan and recipe, its own cap)"
        lines.append(
            f"- `{folder}`{same}: test {m['test_ppl']:.2f} against the entrant's {entrant['test_ppl']:.2f} "
            f"({m['test_ppl'] - entrant['test_ppl']:+.2f}); {increase:+.1f}% over the dense control: within "
            f"{goal:g}% (the compass's goal at {row}): **{met}**"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, metavar="FINAL_DIR", help="`autoshrink train` exports")
    p.add_argument("--row", default="25x", choices=[r for r in CONVERGED_ROWS if r in GOALS], help="[25x]")
    p.add_argument("--out", help="the report [results/compass-<row>.md]")
    p.add_argument(
        "--work", type=Path, default=WORKS["converged"], help=f"the converged tier's entrants [{WORKS['converged']}]"
    )
    args = p.parse_args(argv)
    command = "python -m autoshrink.bench.compass " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        text = markdown(args.row, args.folders, command.strip(), args.work)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(args.out or f"results/compass-{args.row}.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
