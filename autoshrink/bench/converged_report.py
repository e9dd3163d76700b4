"""The reference benchmark's converged tier alone, from the entrants measured so far: its table
and its goal lines, each cell computed from the entrants' results as BENCHMARK.md computes them
(reference_report.converged). For a checkout whose quick-tier run folders are gone, where
rewriting BENCHMARK.md whole would drop every row not measured again.

    python -m autoshrink.bench.converged_report [--rows 25x lstm-25x] [--out results/converged.md]
"""

from __future__ import annotations

import argparse
import sys
import time

from autoshrink.bench.report import commit, write_report


def markdown(setup, rows, command: str) -> str:
    from autoshrink.bench.reference_report import converged

    sizes = {row.name: (setup.scope_bytes(row), setup.model_bytes - setup.scope_bytes(row)) for row in rows}
    return (
        "\n".join(
            [
                f"## The reference benchmark's converged tier ({', '.join(r.name for r in rows)})",
                "",
                f"{time.strftime('%Y-%m-%d')}, CPU, commit {commit()}, `{command}`. Each entrant trains until validation "
                "stops improving, then cools down (the lr decays to zero over a fifth of the schedule), at most 3 epochs, "
                "distilled from the dense model; test perplexity over the whole test split. The last column names the "
                "commit that measured each entrant.",
                "",
                *converged(setup, rows, sizes),
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    from autoshrink.bench.reference import (
        CONVERGED_ROWS,
        QUICK_STEPS,
        ROWS,
        SEARCH_FINETUNE_STEPS,
        SEARCH_TRIALS,
        WORK,
        Setup,
    )

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(CONVERGED_ROWS), choices=list(CONVERGED_ROWS))
    p.add_argument("--model", default="kjv-lstm", help="the reference model [kjv-lstm]")
    p.add_argument("--data", default="kjv", help="its corpus [kjv]")
    p.add_argument("--out", default="results/converged.md", help="the report [results/converged.md]")
    args = p.parse_args(argv)
    setup = Setup(args.model, QUICK_STEPS, SEARCH_TRIALS, SEARCH_FINETUNE_STEPS, WORK, data=args.data, tier="converged")
    rows = [ROWS[name] for name in args.rows]
    command = "python -m autoshrink.bench.converged_report " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(args.out, markdown(setup, rows, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
