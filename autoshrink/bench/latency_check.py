"""How well LatencyTable's per-site estimate predicts the measured latency of compressed models.

For a handful of seeded random plans (lowrank, quant, prune and kronecker on random sites, some
sites left dense) the table's estimate is compared with the median forward time of the model
actually compressed under the plan (the reference input: 35 tokens, batch 1).

    python -m autoshrink.bench.latency_check [--model kjv-lstm-tiny] [--plans 6] [--out results/latency_check.md]
"""

from __future__ import annotations

import argparse
import platform
import random
import time

import torch

from autoshrink.models.load import load
from autoshrink.bench.report import commit, write_report
from autoshrink.measure.latency import LatencyTable, measure_plan_ms
from autoshrink.models import discover_sites


def _method(rng: random.Random) -> dict:
    kind = rng.choice(["lowrank", "quant", "prune", "kronecker"])
    if kind == "lowrank":
        return {"method": "lowrank", "rank": rng.choice([2, 4, 8, 16])}
    if kind == "quant":
        return {"method": "quant", "bits": rng.choice([4, 8, 16])}
    if kind == "prune":
        return {"method": "prune", "density": rng.choice([0.05, 0.1, 0.3])}
    return {"method": "kronecker", "density": rng.choice([0.0, 0.0, 0.02])}


def random_plans(site_names: list[str], count: int, seed: int = 0) -> list[dict]:
    """`count` plans; the first compresses only the vocabulary sites."""
    rng = random.Random(seed)
    plans = [{n: _method(rng) for n in site_names if n in ("encoder", "decoder")}]
    while len(plans) < count:
        plan = {n: _method(rng) for n in site_names if rng.random() < 0.6}
        if plan:
            plans.append(plan)
    return plans[:count]


def _describe(plan: dict) -> str:
    return "; ".join(
        f"{site}: {cfg['method']} " + ",".join(f"{k}={v}" for k, v in cfg.items() if k != "method")
        for site, cfg in plan.items()
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kjv-lstm-tiny")
    p.add_argument("--plans", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--cache", default=None, help="JSON latency table to reuse and extend")
    p.add_argument("--out", default="results/latency_check.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load(args.model, device="cpu")
    table = LatencyTable(model, device="cpu", path=args.cache)
    plans = random_plans([s.name for s in discover_sites(model)], args.plans, args.seed)
    rows = []
    for plan in plans:
        start = time.perf_counter()
        est = table.estimate_ms(plan)
        est_s = time.perf_counter() - start
        measured = measure_plan_ms(model, plan)
        rows.append((plan, est, measured, est_s))
        print(f"{est:8.3f} ms est  {measured:8.3f} ms measured  {est / measured:5.2f}  {_describe(plan)}", flush=True)
    dense_measured = measure_plan_ms(model, {})
    out = [
        f"## LatencyTable estimate vs measured latency on `{args.model}`",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {torch.get_num_threads()} thread(s), machine shared "
        f"with other jobs), commit {commit()}, `python -m autoshrink.bench.latency_check --model {args.model}`. "
        "Latency: median of 20 forward passes of 35 tokens, batch 1. Estimate: dense latency + per-site "
        "deltas (a compressed LSTM matrix: the time to build it once per forward).",
        "",
        f"Dense: table {table.dense_ms:.3f} ms, measured again {dense_measured:.3f} ms. "
        f"Table measurements: {table.measurements} for {len(plans)} plans.",
        "",
        "| # | plan | estimate ms | measured ms | estimate / measured |",
        "|---|---|---|---|---|",
    ]
    for i, (plan, est, measured, _) in enumerate(rows, 1):
        out.append(f"| {i} | {_describe(plan)} | {est:.3f} | {measured:.3f} | {est / measured:.2f} |")
    write_report(args.out, "\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
