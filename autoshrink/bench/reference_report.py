"""results/BENCHMARK.md and results/benchmark.png from the entrants measured so far (reference.py)."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from autoshrink.bench.reference import PAPER, ROWS, Row, entrant_dir, result_of
from autoshrink.bench.report import commit

# The goals for autoshrink (docs/benchmark.md): % perplexity over the dense control at each row.
GOALS = {"25x": 1.0, "50x": 5.0, "100x": 15.0, "lstm-25x": 1.4}
INCLUDED = [("search.md", "Sampler comparison, trial overhead, infeasible plans trained"),
            ("ray_scaling.md", "Ray backend: 1 against 2 workers"),
            ("latency_check.md", "The latency table against measured latency"),
            ("methods.md", "Each method on single matrices at 10x and 25x")]


def _warm(work: Path, row: str, entrant: str = "autoshrink") -> bool:
    """Whether the row's autoshrink search started from single-method plans (run.json)."""
    path = entrant_dir(work, row, entrant) / "search" / "run.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("warm_start", False))


def _increase(ppl: float, dense_ppl: float) -> str:
    """% test perplexity over the dense control."""
    return f"{100 * (ppl / dense_ppl - 1):+.1f}%"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


COLD = "autoshrink-cold"  # an earlier autoshrink entrant (an older search), kept for comparison


def _entrants(row: Row, work: Path) -> list[str]:
    cold = [COLD] if result_of(work, row.name, COLD) is not None else []
    return list(row.singles) + cold + ["autoshrink"]


def _entrant_row(row: Row, entrant: str, r: dict | None, dense_ppl: float | None, scope_bytes: int, out_of_scope: int,
                 work: Path) -> str:
    label = {"autoshrink": "**autoshrink**" if r is None or _warm(work, row.name) else "**autoshrink** (no warm start)",
             COLD: f"autoshrink, earlier search ({'warm start without ranged seeds' if _warm(work, row.name, COLD) else 'no warm start'})"}.get(entrant, entrant)
    if r is None:
        return f"| {row.name} | {label} | not run yet | | | | | | |"
    if "unreachable" in r:
        return f"| {row.name} | {label} | cannot reach: {r['unreachable']} | | | | | | |"
    inc = _increase(r["test_ppl"], dense_ppl) if dense_ppl else "-"
    ratio = scope_bytes / (r["stored_bytes"] - out_of_scope)
    wall = r["train_seconds"] + r.get("search_seconds", 0.0)
    return (f"| {row.name} | {label} | {r['test_ppl']:.2f} | {inc} | {r['stored_bytes']:,} | {ratio:.1f}x | "
            f"{r['tokens_per_s']:,.0f} | {r['latency_ms']:.2f} | {_minutes(wall)} |")


def _table(setup_bytes: dict, rows: list[Row], work: Path, dense: dict | None) -> list[str]:
    dense_ppl = dense["test_ppl"] if dense and "test_ppl" in dense else None
    out = ["| budget | entrant | test ppl | vs dense control | stored bytes | ratio | CPU tokens/s | latency ms | wall time |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        scope, rest = setup_bytes[row.name]
        if dense:
            out.append(_entrant_row(row, "dense", dense, dense_ppl, scope + rest, 0, work))
        for entrant in _entrants(row, work):
            out.append(_entrant_row(row, entrant, result_of(work, row.name, entrant), dense_ppl, scope,
                                    rest if row.roles is not None else 0, work))
    return out


def _goals(rows: list[Row], work: Path, dense: dict | None) -> list[str]:
    if not dense:
        return ["The dense control has not run yet."]
    out = ["| budget | autoshrink | best single method | beats every single method | goal | met |", "|---|---|---|---|---|---|"]
    for row in rows:
        auto = result_of(work, row.name, "autoshrink")
        singles = {e: result_of(work, row.name, e) for e in row.singles}
        trained = {e: r for e, r in singles.items() if r and "test_ppl" in r}
        best = min(trained.items(), key=lambda kv: kv[1]["test_ppl"]) if trained else None
        a = _increase(auto["test_ppl"], dense["test_ppl"]) if auto and "test_ppl" in auto else "not run"
        b = f"{best[0]} {_increase(best[1]['test_ppl'], dense['test_ppl'])}" if best else "none reaches it"
        pending = [e for e, r in singles.items() if r is None]
        if not (auto and "test_ppl" in auto):
            beats = "-"
        else:
            beats = "yes" if all(auto["test_ppl"] < r["test_ppl"] for r in trained.values()) else "no"
            beats += f" ({len(pending)} not run yet)" if pending else ""
        goal = GOALS.get(row.name)
        met = "-" if goal is None or a == "not run" else ("yes" if auto["test_ppl"] / dense["test_ppl"] - 1 <= goal / 100 else "no")
        out.append(f"| {row.name} | {a} | {b} | {beats} | {'-' if goal is None else f'within {goal:g}%'} | {met} |")
    return out


def plot(rows: list[Row], work: Path, dense: dict | None, path: Path, title: str = "kjv-lstm") -> bool:
    """Test perplexity against stored bytes for the whole-model rows, one marker per entrant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    points: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.roles is not None:
            continue
        for entrant in _entrants(row, work):
            r = result_of(work, row.name, entrant)
            if r and "test_ppl" in r:
                points.setdefault(entrant, []).append((r["stored_bytes"], r["test_ppl"]))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for entrant, pts in sorted(points.items()):
        pts.sort()
        style = dict(lw=2.5, color="black", marker="*", ms=12) if entrant == "autoshrink" else dict(lw=1, marker="o")
        entrant = "autoshrink, earlier search" if entrant == COLD else entrant
        ax.plot([p[0] / 1e6 for p in pts], [p[1] for p in pts], label=entrant, **style)
    if dense:
        ax.axhline(dense["test_ppl"], ls="--", color="gray", label=f"dense control ({dense['test_ppl']:.1f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("stored MB (whole model)")
    ax.set_ylabel("test perplexity")
    ax.set_title(f"{title} at 10x, 25x, 50x, 100x: test perplexity after equal final training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def markdown(setup, rows: list[Row], command: str, out_dir: Path) -> str:
    work = setup.work
    dense = result_of(work, "dense", "dense")
    sizes = {row.name: (setup.scope_bytes(row), setup.model_bytes - setup.scope_bytes(row)) for row in rows}
    pre = setup.dense.meta.get("pretrain", {})
    whole = [r for r in rows if r.roles is None]
    scoped = [r for r in rows if r.roles is not None]
    searches = [result_of(work, r.name, "autoshrink") for r in rows]
    peaks = [s["search_peak_rss"] for s in searches if s and "search_peak_rss" in s]
    lines = [
        "# autoshrink benchmark results", "",
        f"The protocol is docs/benchmark.md: the reference model `{setup.model_name}` on the KJV corpus. This file is "
        "written by one command; each included report names its own.", "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {torch.get_num_threads()} thread(s) per process; "
        f"this 2-core machine also ran other jobs, so times are indicative), torch {torch.__version__}, commit {commit()}, "
        f"`{command}`.", "",
        f"Every trained entrant, the dense control included, gets **{setup.steps} steps** of final training "
        "(batch 32 x 35 tokens, Adam 2e-3, 5 validations, best validated state kept) from the pretrained weights; "
        f"autoshrink first searches ({setup.trials} trials of {setup.finetune_steps} fine-tuning steps, NSGA-II, the "
        "row's search space) and trains its front's best plan. Single methods are applied uniformly (every site of the "
        "scope the same share of its dense bytes), their size knob fitted so the whole model just meets the limit, at "
        "fp32 storage (quantisation is its own entrant). Test perplexity is over the whole test split "
        f"({len(setup.lm.test):,} tokens); "
        "stored bytes are checked against the exported file; ratio is of the scope (dense fp32 bytes of its sites / "
        "their stored bytes); latency is batch 1 x 35 tokens on the CPU; tokens/s is test-evaluation throughput; wall "
        "time is search + final training.", "",
        f"## The reference model `{setup.model_name}`", "",
        f"{setup.model_bytes:,} bytes fp32 ({sum(p.numel() for p in setup.dense.parameters()):,} parameters); "
        f"pretrained by `{pre.get('command', 'autoshrink pretrain')}`: validation perplexity {pre.get('val_ppl', '?')}, "
        f"test {pre.get('test_ppl', '?')} after {pre.get('epochs', '?')} epochs ({pre.get('steps', '?')} steps, "
        f"{pre.get('seconds', 0) / 60:.1f} min at {pre.get('tokens_per_s', '?')} tokens/s on {pre.get('threads', '?')} thread(s)).", "",
        "## Whole model at 10x, 25x, 50x, 100x", "",
        *_table(sizes, whole, work, dense), "",
        "![test perplexity against stored bytes](benchmark.png)", "",
        "## At the papers' own scopes", "",
        *_table(sizes, scoped, work, dense), "",
        *[f"- {r.name}: {PAPER[r.name]}." for r in scoped if r.name in PAPER], "",
        "## Against the goals", "",
        *_goals(rows, work, dense), "",
        "## Search cost", "",
        f"- Peak RSS of a search on the reference model: "
        f"{max(peaks) / 1e9:.2f} GB (largest of {len(peaks)} searches)." if peaks else "- No search has run yet.",
        *[f"- {r.name}: {s['search_seconds'] / 60:.1f} min for {s['trials']} trials, "
          f"{'with' if _warm(work, r.name) else 'without'} warm start (`{s['search_command']}`)"
          for r, s in zip(rows, searches) if s and "search_seconds" in s], "",
    ]
    for name, title in INCLUDED:
        path = out_dir / name
        if path.is_file():
            body = path.read_text().strip().splitlines()
            body = [("#" + l if l.startswith("#") else l) for l in body]  # nest its headings under ours
            lines += [f"## {title} ([{name}]({name}))", "", *body, ""]
    return "\n".join(lines) + "\n"
