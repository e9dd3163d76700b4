"""One factorisation per LSTM matrix, or one per gate? Each recurrent site of the reference model
as data-aware low-rank of rank R (U V, the `lowrank` method), against the same parameters spent on
the four gates' row blocks apart (`lowrank` with gates=4: U_k V_k per gate, as GroupReduce does
for word blocks, the total rank split where the blocks' whitened singular values are largest). Alone, fp32,
untrained: the profile's loss increase on the allocation's slice. Says whether a per-gate method
would give per-site choice something to choose at lstm-25x (issue 15), where one uniform low-rank
plan is as good as any per-site sizing.

    python -m autoshrink.bench.gate_blocks [--budget 25x] [--out results/gate_blocks.md]
"""

from __future__ import annotations

import time

import torch

from autoshrink.allocate.replay import Replay
from autoshrink.bench.report import commit, write_report
from autoshrink.bench.storage_widths import site_bench, site_bench_args
from autoshrink.methods.lowrank import U_GROUPS, LowRankConfig, LowRankWeight
from autoshrink.plan import dense_weight

RANKS = (24, 52, 96)  # lstm-25x's uniform 4-bit plan has rank 52; the 25x plan's LSTM ranks reach 96
GATES = 4  # i, f, g, o: an LSTM matrix's rows in four equal blocks


def compare(site, weight: torch.Tensor, stats, rank: int, replay: Replay) -> dict:
    """Loss increase of the `lowrank` fit of rank `rank` and of its `gates` form of equal parameters."""
    m, n = site.shape
    joint = LowRankWeight.build(weight, site, LowRankConfig(rank=rank), stats)
    total = rank * (m + n) // (m // GATES + n)
    gates = LowRankWeight.build(weight, site, LowRankConfig(rank=total, u_groups=U_GROUPS, gates=GATES), stats)
    sites = {site.name: site}
    base = replay.dense_loss
    return {
        "site": site.name,
        "rank": rank,
        "params": rank * (m + n),
        "gate_params": total * (m // GATES + n),
        "ranks": gates.split,
        "joint": replay.loss(sites, {site.name: joint}) - base,
        "gates": replay.loss(sites, {site.name: gates}) - base,
    }


def markdown(results: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| site | rank R | params | joint U V: loss + | per gate: ranks (i, f, g, o) | params | loss + | per gate / joint |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['site']} | {r['rank']} | {r['params']:,} | {r['joint']:.4f} | {', '.join(map(str, r['ranks']))} "
            f"| {r['gate_params']:,} | {r['gates']:.4f} | {r['gates'] / r['joint']:.2f} |"
        )
    wins = [r for r in results if r["gates"] < r["joint"]]
    sites = sorted({r["site"] for r in wins})
    lines += [
        "",
        f"- Per gate is lower at {len(wins)} of {len(results)} (site, rank) pairs"
        + (f": {', '.join(sites)}." if sites else "."),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = site_bench_args(__doc__, "results/gate_blocks.md", argv)
    c, inputs, stats, held_out, start = site_bench(args.budget, args.model, args.data)
    started = time.time()
    replay = Replay(inputs.dense, held_out)
    results = [
        compare(s, dense_weight(inputs.dense.get_submodule(s.name))[0].float(), stats.get(s.name), rank, replay)
        for s in inputs.sites
        if s.role == "recurrent" and s.tied_with is None and s.shape[0] % GATES == 0
        for rank in RANKS
    ]
    header = (
        f"## One factorisation per LSTM matrix or one per gate ({c.model}, data-aware, fp32, untrained)\n\n"
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `python -m autoshrink.bench.gate_blocks`, "
        f"{time.time() - started:.0f} s. Each site alone; loss increase (mean NLL per token over the dense model) on "
        f"validation tokens {start:,}-{start + held_out.numel():,}, calibration over {c.calibration_tokens:,} training "
        "tokens. Joint: the `lowrank` method's fit of rank R (rows weighted by the outputs' gradient moment, inputs "
        "whitened). Per gate: `lowrank` with gates=4, the same parameters (to within one block row) spent on the four "
        "gates' row blocks apart, each fitted with its rows' gradient weights and the whitened inputs, the total rank "
        "going to the largest whitened singular values over the blocks."
    )
    write_report(args.out, markdown(results, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
