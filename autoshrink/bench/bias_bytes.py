"""How much of a budget do the biases take, what would storing them in 8 bits cost, and what would
the bytes it frees buy? Every method keeps a compressed site's bias in fp32 beside its tensors
(plan/bytes.py), and at high ratios those biases are a large share of the limit. Three figures:

1. the share of each whole-model row's limit that the fp32 biases of kjv-lstm's sites take;
2. the cost: the test perplexity of the quick tier's trained autoshrink entrants with every bias
   rounded to 8 bits (one scale and offset per tensor) against fp32;
3. the gain at one row: the quick tier's autoshrink and low-rank entrants searched and trained as
   the benchmark does, at the row's limit plus the bytes 8-bit biases would free.

    python -m autoshrink.bench.bias_bytes [--row 100x] [--work results/runs/bias-bytes] [--out results/bias_bytes.md]

Resumable: the search and each training are kept in WORK. This measures what the change would
buy before it is built; the benchmark's methods still store biases in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from autoshrink.bench.reference import (
    QUICK_STEPS,
    ROWS,
    SEARCH_FINETUNE_STEPS,
    SEARCH_TRIALS,
    SINGLES,
    WORKS,
    Row,
    entrant_dir,
    result_of,
)
from autoshrink.bench.report import commit, write_report
from autoshrink.errors import UserError

WORK = Path("results/runs/bias-bytes")
CODE_BITS = 8
SCALE_BYTES = 8  # an fp32 scale and offset per bias tensor
HEADER_BYTES = 80  # a second tensor's entry in the safetensors header, rounded up


def bias_bytes(sites) -> int:
    """fp32 bytes of the biases of `sites` (each site's own; a tied site's bias is its own too)."""
    return sum(4 * s.shape[0] for s in sites if s.bias)


def freed_bytes(sites) -> int:
    """What storing each bias as CODE_BITS codes plus a scale and offset would free, the file's
    header entries for the scales counted."""
    codes = sum(-(-s.shape[0] * CODE_BITS // 8) + SCALE_BYTES + HEADER_BYTES for s in sites if s.bias)
    return bias_bytes(sites) - codes


def round_to_bits(t: torch.Tensor, bits: int = CODE_BITS) -> torch.Tensor:
    """t rounded to 2**bits levels between its minimum and maximum (asymmetric, one scale per tensor)."""
    lo, hi = t.min(), t.max()
    step = (hi - lo).clamp_min(1e-12) / (2**bits - 1)
    return torch.round((t - lo) / step) * step + lo


def rounded_cost(folder: Path, lm) -> tuple[float, float]:
    """(test ppl, test ppl with every bias rounded to CODE_BITS) of an exported model."""
    from autoshrink.models.load import load
    from autoshrink.models.training import evaluate_perplexity

    model = load(str(folder), data="kjv").eval()
    before = evaluate_perplexity(model, lm.test)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(round_to_bits(p))
    return before, evaluate_perplexity(model, lm.test)


def measure(row_name: str, work: Path, log=print) -> dict:
    from autoshrink.bench.reference import Setup, run_autoshrink, run_single

    row = ROWS[row_name]
    before = {e: result_of(WORKS["quick"], row.name, e) for e in ("autoshrink", "lowrank")}
    for entrant, r in before.items():
        if r is None or "test_ppl" not in r:
            raise UserError(
                f"the quick tier has no {row.name} {entrant} result: python -m autoshrink.bench --rows {row.name}"
            )
    setup = Setup("kjv-lstm", QUICK_STEPS, SEARCH_TRIALS, SEARCH_FINETUNE_STEPS, work)
    limits = {name: setup.max_bytes(r) for name, r in ROWS.items() if r.roles is None}  # every bias in scope
    cost = {}
    for name in limits:
        folder = entrant_dir(WORKS["quick"], name, "autoshrink")
        if (folder / "model.safetensors").is_file():
            cost[name] = rounded_cost(folder, setup.lm)
    freed_total = freed_bytes(setup.sites)
    limit = setup.max_bytes(row) + freed_total
    # Setup.max_bytes floors dense / ratio: half a byte over the limit makes it the limit exactly
    freed = Row(f"{row.name}-bias{CODE_BITS}", setup.dense_bytes / (limit + 0.5), None, row.space, row.scope, SINGLES)
    gain = {}
    for entrant, run in (("autoshrink", run_autoshrink), ("lowrank", lambda s, r: run_single(s, r, "lowrank"))):
        done = entrant_dir(work, freed.name, entrant) / "bench.json"
        r = json.loads(done.read_text()) if done.is_file() else run(setup, freed)
        if "test_ppl" not in r:
            raise UserError(f"{freed.name} {entrant}: {r.get('unreachable', 'no test perplexity')}")
        gain[entrant] = (before[entrant]["test_ppl"], r.get("test_ppl"), r.get("stored_bytes"))
    dense = result_of(WORKS["quick"], "dense", "dense")
    return {
        "row": row.name,
        "bias_bytes": bias_bytes(setup.sites),
        "biases": [(s.name, s.shape[0]) for s in setup.sites if s.bias],
        "search": (setup.trials, setup.finetune_steps, setup.steps),
        "freed": freed_total,
        "limits": limits,
        "cost": cost,
        "gain": gain,
        "dense": dense and dense.get("test_ppl"),
    }


def markdown(m: dict, command: str) -> str:
    lines = [
        "## fp32 biases in the budget (kjv-lstm)",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `{command}`. kjv-lstm's sites hold {m['bias_bytes']:,} "
        f"bytes of fp32 biases ({', '.join(f'{name} {n:,}' for name, n in m['biases'])} values); stored as "
        f"{CODE_BITS}-bit codes with a scale and offset per tensor they would free {m['freed']:,} bytes.",
        "",
        "| row | limit | fp32 biases' share of it | autoshrink test ppl, fp32 biases | biases rounded to "
        f"{CODE_BITS} bits |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, limit in m["limits"].items():
        cost = m["cost"].get(name)
        costs = f"{cost[0]:.3f} | {cost[1]:.3f}" if cost else "no exported model here | -"
        lines.append(f"| {name} | {limit:,} | {100 * m['bias_bytes'] / limit:.1f}% | {costs} |")
    lines += [
        "",
        f"At {m['row']}, searched and trained as the quick tier does ({m['search'][0]} trials of {m['search'][1]} "
        f"steps; {m['search'][2]} final steps), at "
        f"the limit plus the {m['freed']:,} bytes {CODE_BITS}-bit biases would free:",
        "",
        f"| entrant | test ppl at the {m['row']} limit | test ppl with the freed bytes | stored bytes |",
        "|---|---:|---:|---:|",
    ]
    for entrant, (before, after, stored) in m["gain"].items():
        lines.append(f"| {entrant} | {before:.2f} | {after:.2f} | {stored:,} |")
    worst = max((abs(c[1] - c[0]) for c in m["cost"].values()), default=0.0)
    auto = m["gain"]["autoshrink"]
    lines += [
        "",
        f"Rounding every bias to {CODE_BITS} bits moves a trained entrant's test perplexity by at most "
        f"{worst:.4f}; the freed bytes move autoshrink's {m['row']} entrant from {auto[0]:.2f} to {auto[1]:.2f}"
        + (f" (dense control {m['dense']:.2f})." if m["dense"] else "."),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--row", default="100x", choices=[n for n, r in ROWS.items() if r.roles is None])
    p.add_argument("--work", type=Path, default=WORK, help=f"the search and trainings [{WORK}]")
    p.add_argument("--out", default="results/bias_bytes.md")
    args = p.parse_args(argv)
    try:
        m = measure(args.row, args.work)
    except UserError as e:
        p.exit(2, f"{p.prog}: {e}\n")
    command = "python -m autoshrink.bench.bias_bytes " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(args.out, markdown(m, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
