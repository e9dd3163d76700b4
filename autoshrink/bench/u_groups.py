"""U in rows or transposed? Each site of the reference model under data-aware low-rank with U
stored in rows (a scale per row) and transposed (`u_groups`: a scale per g rows of each column),
at about equal bytes (the largest rank within the row layout's bytes), alone and untrained: the
profile's loss increase on the allocation's slice. Says where the spaces store U transposed
(methods/lowrank.py U_GROUPS).

    python -m autoshrink.bench.u_groups [--budget 25x] [--out results/u_groups.md]
"""

from __future__ import annotations

import time
from collections import Counter

from autoshrink.allocate.profile import profile, row_config
from autoshrink.bench.report import commit, write_report
from autoshrink.bench.storage_widths import loss_cell, site_bench, site_bench_args, win_lines
from autoshrink.methods.lowrank import LowRankConfig
from autoshrink.plan import method_bytes
from autoshrink.plan.fit import largest_within

RANKS = {"embedding": (6, 16, 32), "softmax": (6, 10, 16, 32), "recurrent": (12, 32, 64)}  # in rows
BITS = (3, 4)
GROUPS = (64, 128, 256)


def layouts(site, rank: int, bits: int, freqs) -> list[LowRankConfig]:
    """U in rows at `rank`, then transposed at each of GROUPS at the largest rank within its bytes."""
    rows = LowRankConfig(rank=rank, bits=bits)
    limit = method_bytes(site, rows, freqs)
    fitted = [largest_within(site, LowRankConfig(rank=rank, bits=bits, u_groups=g), limit, freqs) for g in GROUPS]
    return [rows, *(c for c in fitted if c is not None)]


def main(argv: list[str] | None = None) -> int:
    args = site_bench_args(__doc__, "results/u_groups.md", argv)
    c, inputs, stats, held_out, start = site_bench(args.budget, args.model, args.data)
    cases = [
        (s, bits, layouts(s, r, bits, inputs.freqs))
        for s in inputs.sites
        if s.role in RANKS
        for r in RANKS[s.role]
        for bits in BITS
    ]
    options: dict[str, list] = {}
    for s, _, configs in cases:
        options.setdefault(s.name, []).extend(cfg for cfg in configs if cfg not in options.get(s.name, []))
    started = time.time()
    table = profile(inputs.dense, held_out, options, freqs=inputs.freqs, stats=stats, path=None, shared=False)
    rows = {(r.site, row_config(r)): r for _, r in table.iterrows()}
    lines = [
        f"## U stored in rows or transposed at equal bytes ({c.model}, data-aware low-rank, untrained)",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `python -m autoshrink.bench.u_groups`, "
        f"{time.time() - started:.0f} s. Each site alone; loss increase (mean NLL per token over the dense model) "
        f"on validation tokens {start:,}-{start + held_out.numel():,}, calibration over {c.calibration_tokens:,} "
        "training tokens. Rows: a scale per row of U; g: U transposed, a scale per g rows of each column, at the "
        "largest rank within the rows layout's bytes. Lower is better; the best layout of each row is bold.",
        "",
        "| site | bits | bytes | rows | " + " | ".join(f"g = {g}" for g in GROUPS) + " |",
        "|---|---:|---:|---|" + "---|" * len(GROUPS),
    ]
    wins: dict[str, Counter] = {}
    for s, bits, configs in cases:
        measured = [rows[(s.name, cfg)] for cfg in configs]
        best = min(range(len(measured)), key=lambda i: measured[i].loss_delta)
        cells = [loss_cell(r, i == best) for i, r in enumerate(measured)] + ["-"] * (1 + len(GROUPS) - len(measured))
        lines.append(f"| {s.name} | {bits} | {measured[0].bytes:,} | " + " | ".join(cells) + " |")
        winner = "rows" if best == 0 else f"g = {configs[best].u_groups}"
        wins.setdefault(s.name, Counter())[winner] += 1
    lines += ["", *win_lines(wins, "layout")]
    write_report(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
