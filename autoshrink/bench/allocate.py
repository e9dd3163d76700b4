"""Allocation on the reference model (issue 15): profile, knapsack and joint refinement against the
uniform plain low-rank plan the search's warm start uses, all without fine-tuning.

The allocation sees only the `--slice` validation tokens after the first 12,000; perplexities are
reported on those first 12,000 validation tokens (the figure docs/methods.md, data-aware initialisation quotes) and on
the whole test split, so the refinement's choice is judged on tokens it never saw. Builds are plain (no
calibration statistics); the profile goes to `<run-dir>/profile.csv` and is reused by a rerun.

    python -m autoshrink.bench.allocate [--budget 25x] [--slice 4000] [--evals 48] [--out results/allocate.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch

from autoshrink.allocate import allocate
from autoshrink.models.load import load
from autoshrink.bench.report import commit, write_report
from autoshrink.plan.fit import uniform_plan
from autoshrink.search.budget import parse_budget
from autoshrink.data import load_lm_data
from autoshrink.methods.groupreduce import GroupReduceConfig
from autoshrink.methods.lowrank import LowRankConfig
from autoshrink.methods.quant import QuantConfig
from autoshrink.models import discover_sites
from autoshrink.models.training import evaluate_perplexity
from autoshrink.plan import ModelFile, compress, dense_bytes, plan_stored_bytes
from autoshrink.search.warm_start import PREFERRED_BITS

REPORT_TOKENS = 12_000
GROUP = 64  # values per quantisation scale of the allocated options (scales counted)

# The options: low-rank at 4 and 8 bits everywhere, quantisation where its bits fit, GroupReduce
# on the vocabulary matrices.
BASES = {
    "embedding": [
        LowRankConfig(bits=4, group_size=GROUP),
        LowRankConfig(bits=8, group_size=GROUP),
        QuantConfig(group_size=GROUP),
        GroupReduceConfig(blocks=8, bits=8, group_size=GROUP),
    ],
    "recurrent": [
        LowRankConfig(bits=4, group_size=GROUP),
        LowRankConfig(bits=8, group_size=GROUP),
        QuantConfig(group_size=GROUP),
    ],
}
BASES["softmax"] = BASES["embedding"]


def _describe(plan: dict) -> str:
    parts = []
    for name, cfg in plan.items():
        knob = type(cfg).size_knob
        size = f"{knob}={getattr(cfg, knob)}" if knob and knob != "bits" else ""
        parts.append(f"{name}: {cfg.method} {size} {cfg.bits}b".replace("  ", " "))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="kjv-lstm")
    parser.add_argument("--budget", default="25x")
    parser.add_argument(
        "--slice", type=int, default=4000, help="validation tokens the allocation sees (after the reported ones)"
    )
    parser.add_argument("--evals", type=int, default=48, help="joint evaluations of the refinement")
    parser.add_argument("--run-dir", default="results/runs/allocate-bench")
    parser.add_argument("--out", default="results/allocate.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    model = load(args.model)
    data = load_lm_data("kjv", vocab=model.vocab)
    freqs = model.vocab.freqs
    sites = discover_sites(model)
    limit = parse_budget(args.budget).max_bytes(dense_bytes(model))
    model_file = ModelFile.of(model, sites)

    start = time.perf_counter()
    result = allocate(
        model,
        data.valid[REPORT_TOKENS:],
        BASES,
        limit,
        freqs=freqs,
        tokens=args.slice,
        max_evals=args.evals,
        profile_path=f"{args.run_dir}/profile.csv",
        progress=False,
    )
    wall = time.perf_counter() - start

    def ppl(plan: dict) -> tuple[float, float]:
        compressed = compress(model, plan, freqs=freqs)
        return (
            evaluate_perplexity(compressed, data.valid, max_tokens=REPORT_TOKENS),
            evaluate_perplexity(compressed, data.test),
        )

    uniform = uniform_plan(LowRankConfig(bits=PREFERRED_BITS), sites, limit, freqs, model_file)
    knapsack = next(p for p in result.plans if p.source == "knapsack")
    rows = [
        ("dense", {}, None),
        ("uniform plain low-rank, 8 bits (the warm start's seed)", uniform, None),
        ("knapsack over the profile", knapsack.plan, knapsack.joint_loss),
        ("refined (the refinement's choice)", result.best.plan, result.best.joint_loss),
    ]
    slice_dense = math.exp(result.dense_loss)
    lines = [
        f"# Allocation without training: {args.model} at {args.budget}",
        "",
        f"Commit {commit()}, {platform.machine()}, torch {torch.__version__}, 1 thread. Limit {limit:,} bytes "
        f"(dense fp32 / {args.budget[:-1] if args.budget.endswith('x') else args.budget}). Plain builds "
        "(no calibration statistics), no fine-tuning.",
        "",
        f"Options: low-rank at 4 and 8 bits (groups of {GROUP}, scales counted), quantisation (groups of {GROUP}), "
        "GroupReduce (8 blocks, 8 bits) on the embedding and softmax; up to 10 size levels each, "
        f"{len(result.table)} site options in all. The allocation saw validation tokens "
        f"{REPORT_TOKENS:,}-{REPORT_TOKENS + args.slice:,} "
        f"(dense ppl {slice_dense:.2f} there); val ppl is on the first {REPORT_TOKENS:,} validation tokens, test "
        "ppl on the whole test split.",
        "",
        "| plan | bytes | ratio | val ppl | test ppl | slice ppl (joint) | per site |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for label, plan, joint in rows:
        nbytes = plan_stored_bytes(sites, plan, freqs, model_file)
        val, test = ppl(plan)
        joint_text = f"{math.exp(result.dense_loss + joint):.2f}" if joint is not None else ""
        lines.append(
            f"| {label} | {nbytes:,} | {dense_bytes(model) / nbytes:.1f}x | {val:.2f} | {test:.2f} | "
            f"{joint_text} | {_describe(plan)} |"
        )
    t = result.seconds
    lower = sum(p.joint_loss < result.best.joint_loss for p in result.plans)
    lines += [
        "",
        f"Wall time of `allocate` {wall:.0f} s: profile {t['profile']:.0f} s in this run (its {len(result.table)} "
        f"options took {result.table['seconds'].sum():.0f} s when measured, per {args.run_dir}/profile.csv, which a "
        f"rerun reads), replay cache {t['replay']:.1f} s, knapsack {t['knapsack']:.1f} s, refinement "
        f"{t['refine']:.0f} s for {len(result.plans)} joint evaluations. {lower} of them had a lower mean loss on "
        "the slice than the plan chosen (the refinement switches plans only on a win by two standard errors of "
        "the paired per-token difference).",
        "",
        "Knapsack ladder (the plans for fractions of the limit, seeds of a front), on the allocation's slice:",
        "",
        "| fraction | bytes | sum of profile losses | joint loss | slice ppl | per site |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for fraction, plan in result.ladder.items():
        if plan is not None:
            lines.append(
                f"| {fraction:g} | {plan.bytes:,} | {plan.profile_loss:.4f} | {plan.joint_loss:.4f} | "
                f"{math.exp(result.dense_loss + plan.joint_loss):.2f} | {_describe(plan.plan)} |"
            )
    lines += [
        "",
        "Regenerate:",
        "",
        "```bash",
        f"PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m autoshrink.bench.allocate --budget {args.budget} "
        f"--slice {args.slice} --evals {args.evals} --out {args.out}",
        "```",
        "",
    ]
    write_report(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
