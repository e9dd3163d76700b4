"""Fewer bits and more rank, or the reverse? Each site of the reference model under data-aware
low-rank at 4, 3 and 2 bits with ranks scaled to about equal bytes (rank r at 4 bits, 4r/3 at 3,
2r at 2), alone and untrained: the profile's loss increase on the allocation's slice. Says which
storage widths the profile should offer (search/allocation.PROFILE_BITS).

    python -m autoshrink.bench.storage_widths [--budget 25x] [--out results/storage_widths.md]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import torch

from autoshrink.allocate.pipeline import SLICE_TOKENS
from autoshrink.allocate.profile import profile, row_config
from autoshrink.bench.report import commit, write_report
from autoshrink.methods.lowrank import LowRankConfig
from autoshrink.search.allocation import held_out_start
from autoshrink.search.config import SearchConfig
from autoshrink.search.prepare import calibration, load_inputs, target
from autoshrink.search.trial import TrialSettings

WIDTHS = {4: 1.0, 3: 4 / 3, 2: 2.0}  # bits: rank multiplier at about equal bytes
RANKS = {"embedding": (8, 16), "softmax": (8, 16), "recurrent": (30, 52, 87)}  # 4-bit ranks per role


class SiteBench(NamedTuple):
    """What a per-site untrained comparison needs: the search's settings and inputs, the
    calibration, and the allocation's held-out slice (starting at `start` of the valid split)."""

    config: SearchConfig
    inputs: Any
    stats: dict | None
    held_out: torch.Tensor
    start: int


def site_bench(budget: str, model: str | None, data: str | None) -> SiteBench:
    with tempfile.TemporaryDirectory(prefix="site-bench-") as tmp:  # the settings' run folder, never written
        folder = Path(tmp)
        c = SearchConfig(budget=budget, model=model, data=data, run_dir=folder).resolved({}, folder)
        inputs = load_inputs(c, target(c), {}, print)
    stats = calibration(inputs, c.calibration_tokens, print)
    valid = inputs.data.valid.reshape(-1)
    start = held_out_start(valid.numel(), TrialSettings.eval_tokens)
    return SiteBench(c, inputs, stats, valid[start : start + SLICE_TOKENS], start)  # the allocation's slice


def site_bench_args(description: str, out: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="25x", help="only names the search whose data and calibration are used")
    p.add_argument("--model", default=None, help="a preset or a model folder (the search's default)")
    p.add_argument("--data", default=None, help="the model's corpus (the search's default)")
    p.add_argument("--out", default=out)
    return p.parse_args(argv)


def loss_cell(r, best: bool) -> str:
    """A profile row's loss increase (bold when it is its row's best), rank and bytes."""
    loss = f"**{r.loss_delta:.4f}**" if best else f"{r.loss_delta:.4f}"
    return f"{loss} (rank {row_config(r).rank}, {r.bytes:,} B)"


def win_lines(wins: dict[str, Counter], what: str) -> list[str]:
    """One line per site: how often each choice was best."""
    return [
        f"- {site}: best {what} " + ", ".join(f"{w} at {n} size(s)" for w, n in counts.most_common())
        for site, counts in wins.items()
    ]


def main(argv: list[str] | None = None) -> int:
    args = site_bench_args(__doc__, "results/storage_widths.md", argv)
    c, inputs, stats, held_out, start = site_bench(args.budget, args.model, args.data)
    options = {
        s.name: [
            LowRankConfig(rank=round(r * mult), bits=bits)
            for r in RANKS.get(s.role, ())
            for bits, mult in WIDTHS.items()
        ]
        for s in inputs.sites
        if s.role in RANKS
    }
    started = time.time()
    table = profile(inputs.dense, held_out, options, freqs=inputs.freqs, stats=stats, path=None, shared=False)
    lines = [
        f"## Storage width against rank at equal bytes ({c.model}, data-aware low-rank, untrained)",
        "",
        f"{time.strftime('%Y-%m-%d')}, commit {commit()}, `python -m autoshrink.bench.storage_widths`, "
        f"{time.time() - started:.0f} s. Each site alone; loss increase (mean NLL per token over the dense model) "
        f"on validation tokens {start:,}-{start + held_out.numel():,}, calibration over {c.calibration_tokens:,} "
        "training tokens. Lower is better; the best width of each row is bold.",
        "",
        "| site | bytes (4-bit) | 4 bits | 3 bits | 2 bits |",
        "|---|---:|---|---|---|",
    ]
    wins: dict[str, Counter] = {}
    per = len(WIDTHS)
    for i in range(0, len(table), per):
        group = table.iloc[i : i + per]
        best = group.loss_delta.idxmin()
        cells = [loss_cell(r, j == best) for j, r in group.iterrows()]
        lines.append(f"| {group.site.iloc[0]} | {group.bytes.iloc[0]:,} | " + " | ".join(cells) + " |")
        bits = list(WIDTHS)[list(group.index).index(best)]
        wins.setdefault(group.site.iloc[0], Counter())[bits] += 1
    lines += [
        "",
        *win_lines({site: Counter({f"{b} bits": n for b, n in c.items()}) for site, c in wins.items()}, "width"),
    ]
    write_report(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
