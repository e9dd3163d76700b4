"""`python -m autoshrink.bench`: run the reference benchmark's entrants and write its report.

Apart from bench/reference.py (the entrants) and bench/reference_report.py (the report), which
both need the rows and entrants' folders, so that neither imports the other's caller.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from autoshrink.bench import reference
from autoshrink.bench.reference_report import goal_lines, markdown, plot, readme_block
from autoshrink.bench.report import write_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autoshrink.bench",
        description=reference.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--rows",
        nargs="+",
        default=list(reference.ROWS),
        choices=list(reference.ROWS),
        metavar="ROW",
        help=f"rows to run [{' '.join(reference.ROWS)}]",
    )
    p.add_argument(
        "--entrants",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these entrants of the rows (dense, a method name, autoshrink) [all]",
    )
    p.add_argument("--model", default="kjv-lstm", help="the reference model [kjv-lstm]")
    p.add_argument("--data", default="kjv", help="its corpus [kjv]")
    p.add_argument(
        "--tier",
        choices=("quick", "converged"),
        default="quick",
        help="quick: --steps for every entrant of every row; converged: the rows "
        f"{' and '.join(reference.CONVERGED_ROWS)} trained to a plateau (at most {reference.CONVERGED_EPOCHS:g} epochs), distilled [quick]",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=reference.QUICK_STEPS,
        help=f"final-training steps of every entrant in the quick tier [{reference.QUICK_STEPS}]",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=reference.SEARCH_TRIALS,
        help=f"autoshrink's search trials per row [{reference.SEARCH_TRIALS}]",
    )
    p.add_argument(
        "--finetune-steps",
        type=int,
        default=reference.SEARCH_FINETUNE_STEPS,
        help=f"fine-tuning steps per search trial [{reference.SEARCH_FINETUNE_STEPS}]",
    )
    p.add_argument("--part", default="0/1", help="K/N: run every N-th work item from the K-th (parallel parts) [0/1]")
    p.add_argument(
        "--work",
        default=str(reference.WORK),
        help=f"where the quick tier's entrants are trained and kept [{reference.WORK}]",
    )
    p.add_argument(
        "--converged-work",
        default=str(reference.WORKS["converged"]),
        help=f"where the converged tier's entrants are kept [{reference.WORKS['converged']}]",
    )
    p.add_argument("--out", default="results", help="folder of BENCHMARK.md and benchmark.png [results]")
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from what was measured")
    p.add_argument(
        "--readme",
        help="the README whose generated goal block (between its benchmark-goals markers) is rewritten from the "
        "table [README.md when --out is results; none otherwise]",
    )
    args = p.parse_args(argv)
    try:
        k, n = (int(x) for x in args.part.split("/"))
        assert 0 <= k < n
    except (ValueError, AssertionError):
        p.error(f"--part must be K/N with 0 <= K < N, got {args.part!r}")
    if args.steps < 1 or args.trials < 1:
        p.error("--steps and --trials must be at least 1")
    setup = reference.Setup(
        args.model,
        args.steps,
        args.trials,
        args.finetune_steps,
        Path(args.work),
        data=args.data,
        tier=args.tier,
        converged_work=Path(args.converged_work),
    )
    command = "python -m autoshrink.bench " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = [reference.ROWS[name] for name in reference.ROWS if name in args.rows]
    if not args.report_only:
        for i, (row, entrant) in enumerate(reference.work_items(args.rows, args.tier)):
            if i % n != k or reference.result_of(setup.tier_work, row, entrant) is not None:
                continue
            if args.entrants is not None and entrant not in args.entrants:
                continue
            print(f"== {row} {entrant}", flush=True)
            reference.run_item(setup, row, entrant)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(rows, setup.work, reference.result_of(setup.work, "dense", "dense"), out / "benchmark.png", args.model)
    write_report(out / "BENCHMARK.md", markdown(setup, rows, command.strip(), out))
    readme = Path(args.readme) if args.readme else Path("README.md") if args.out == "results" else None
    if readme is not None:
        try:
            readme.write_text(readme_block(readme.read_text(), goal_lines(setup, rows)))
        except (OSError, ValueError) as e:
            p.error(f"--readme {readme}: {e}")  # the report above is written already
    return 0
