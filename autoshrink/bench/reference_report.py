"""results/BENCHMARK.md and results/benchmark.png from the entrants measured so far (reference.py)."""

from __future__ import annotations

import functools
import json
import platform
import shlex
import time
from pathlib import Path

import torch

from autoshrink.bench.reference import (
    BEST_UNIFORM,
    CONVERGED_EPOCHS,
    CONVERGED_ROWS,
    PAPER,
    PROTOCOL,
    SMALL_DENSE,
    Row,
    entrant_dir,
    entrants_of,
    result_of,
)
from autoshrink.bench.report import commit

# Goals for autoshrink: % perplexity over the dense control at each row. The quick tier holds
# the compass's (docs/benchmark.md); the converged tier issue 16's (the papers trained to convergence).
GOALS = {"25x": 1.0, "50x": 5.0, "100x": 15.0, "lstm-25x": 1.4}
CONVERGED_GOALS = {"25x": 10.0, "lstm-25x": 5.0}
SEARCH_GOAL = 0.85  # issue 15: autoshrink's increase at most this share of the best uniform plan's
INCLUDED = [
    ("search.md", "Sampler comparison, trial overhead, infeasible plans trained"),
    ("ray_scaling.md", "Ray backend: 1 against 2 workers"),
    ("latency_check.md", "The latency table against measured latency"),
    ("methods.md", "Each method on single matrices at 10x and 25x"),
]


def _search_dir(work: Path, row: str, r: dict | None = None, entrant: str = "autoshrink") -> Path:
    """An autoshrink entrant's search folder: the `--run-dir` of the search it trained (the
    converged tier trains the quick tier's search), else the one in its own folder."""
    args = shlex.split((r or {}).get("search_command", ""))
    if "--run-dir" in args[:-1]:
        return Path(args[args.index("--run-dir") + 1])
    return entrant_dir(work, row, entrant) / "search"


def _warm(search: Path) -> bool:
    """Whether a search started from single-method plans (its run.json)."""
    path = search / "run.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("warm_start", False))


def increase_text(ppl: float, dense_ppl: float) -> str:
    """% test perplexity over the dense control."""
    return f"{100 * (ppl / dense_ppl - 1):+.1f}%"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


COLD = "autoshrink-cold"  # an earlier autoshrink entrant (an older search's plan), kept for comparison


def _entrants(row: Row, work: Path, tier: str = "quick") -> list[str]:
    """The row's entrants in table order: autoshrink last (the converged tier trains it first), an
    earlier search's entrant just before it."""
    cold = [COLD] if result_of(work, row.name, COLD) is not None else []
    return [e for e in entrants_of(row, tier) if e != "autoshrink"] + cold + ["autoshrink"]


def best_uniform(row: Row, work: Path, tier: str = "quick") -> tuple[str, dict] | None:
    """(entrant, result) of the row's best uniform plan: the converged tier's own entrant, or in the
    quick tier the single method with the lowest validation perplexity (chosen on valid, not test)."""
    if tier == "converged":
        r = result_of(work, row.name, BEST_UNIFORM)
        return (BEST_UNIFORM, r) if r and "test_ppl" in r else None
    trained = {e: result_of(work, row.name, e) for e in row.singles}
    trained = {e: r for e, r in trained.items() if r and "val_ppl" in r}
    return min(trained.items(), key=lambda kv: kv[1]["val_ppl"]) if trained else None


def _same_plan_as(row: Row, work: Path, plan: dict, tier: str) -> str | None:
    """The single method whose uniform plan equals `plan`, if any."""
    singles = (
        {e: result_of(work, row.name, e) for e in row.singles}
        if tier == "quick"
        else {BEST_UNIFORM: result_of(work, row.name, BEST_UNIFORM)}
    )
    for e, r in singles.items():
        if r and r.get("plan") == plan:
            return r.get("method", e)
    return None


def searched_origin(work: Path, row: Row, r: dict | None) -> str | None:
    """Where the search's trained plan came from (search/study.py origin_of): "uniform <method>"
    for one of its uniform controls; None where the search folder cannot say (gone, or a later
    search in its place whose trial of that number is another plan)."""
    if not r or "trial" not in r:
        return None
    search = _search_dir(work, row.name, r)
    db = search / "study.db"
    plan = json.dumps(r.get("plan"), sort_keys=True)
    return _origin(search, r["trial"], plan, db.stat().st_mtime_ns if db.exists() else 0)


@functools.lru_cache(maxsize=64)
def _origin(search: Path, trial: int, plan: str, version: int) -> str | None:
    """One study read per row and study version: the table and the goals both ask."""
    from autoshrink.errors import UserError
    from autoshrink.search.study import load_study, origin_of

    try:
        study = load_study(search)
    except UserError:
        return None
    return next(
        (
            origin_of(t)
            for t in study.get_trials(deepcopy=False)
            if t.number == trial and json.dumps(t.user_attrs.get("plan"), sort_keys=True) == plan
        ),
        None,
    )


def is_uniform(row: Row, work: Path, r: dict, tier: str = "quick") -> str | None:
    """The uniform plan the searched plan is, if it is one: a single method's entrant with the same
    plan, or one of the search's own uniform controls. None for a per-site plan."""
    same = _same_plan_as(row, work, r.get("plan", {}), tier)
    if same:
        return same
    origin = searched_origin(work, row, r)
    return origin.removeprefix("uniform ") if origin and origin.startswith("uniform ") else None


def _storage(r: dict) -> str:
    bits = {cfg.get("bits", 32) for cfg in r.get("plan", {}).values()}
    return "-" if not bits else "/".join(("fp32" if b >= 32 else f"{b}-bit") for b in sorted(bits, reverse=True))


def _label(row: Row, entrant: str, r: dict | None, work: Path, tier: str) -> str:
    if entrant == "autoshrink":
        label = (
            "**autoshrink**" if r is None or _warm(_search_dir(work, row.name, r)) else "**autoshrink** (no warm start)"
        )
        same = r and "plan" in r and is_uniform(row, work, r, tier)
        return label + (f" (= the uniform {same} plan)" if same else "")
    if entrant == COLD:
        return f"autoshrink, an earlier search's plan (measured at {(r or {}).get('commit', '?')})"
    if entrant == BEST_UNIFORM and r and "method" in r:
        return f"best uniform ({r['method']})"
    if entrant == SMALL_DENSE and r and "dims" in r:
        return f"small dense ({r['dims']}/{r['dims']} dims, 8-bit)"
    return entrant


def _entrant_row(
    row: Row,
    entrant: str,
    r: dict | None,
    dense_ppl: float | None,
    scope_bytes: int,
    out_of_scope: int,
    work: Path,
    tier: str = "quick",
) -> str:
    label = _label(row, entrant, r, work, tier)
    if r is None:
        return f"| {row.name} | {label} | not run yet | | | | | | | | |"
    if "unreachable" in r:
        return f"| {row.name} | {label} | cannot reach: {r['unreachable']} | | | | | | | | |"
    inc = increase_text(r["test_ppl"], dense_ppl) if dense_ppl else "-"
    ratio = scope_bytes / (r["stored_bytes"] - out_of_scope)
    wall = r["train_seconds"] + r.get("search_seconds", 0.0)
    measured = r.get("commit", "before protocol 2" if r.get("protocol") != PROTOCOL else "?")
    if r.get("protocol") != PROTOCOL:
        measured = "earlier protocol (fp32 singles, old recipe)"
    return (
        f"| {row.name} | {label} | {r['test_ppl']:.2f} | {inc} | {r['stored_bytes']:,} | {ratio:.1f}x | {_storage(r)} | "
        f"{r['tokens_per_s']:,.0f} | {r['latency_ms']:.2f} | {_minutes(wall)} | {measured} |"
    )


def _table(setup_bytes: dict, rows: list[Row], work: Path, dense: dict | None, tier: str = "quick") -> list[str]:
    dense_ppl = dense["test_ppl"] if dense and "test_ppl" in dense else None
    out = [
        "| budget | entrant | test ppl | vs dense control | stored bytes | ratio | storage | CPU tokens/s "
        "| latency ms | wall time | measured at |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        scope, rest = setup_bytes[row.name]
        if dense:
            out.append(_entrant_row(row, "dense", dense, dense_ppl, scope + rest, 0, work, tier))
        for entrant in _entrants(row, work, tier):
            out.append(
                _entrant_row(
                    row,
                    entrant,
                    result_of(work, row.name, entrant),
                    dense_ppl,
                    scope,
                    rest if row.roles is not None else 0,
                    work,
                    tier,
                )
            )
        if tier == "quick" and (best := best_uniform(row, work)):
            out.append(
                f"| {row.name} | best uniform = {best[0]} (lowest val ppl) | {best[1]['test_ppl']:.2f} | "
                f"{increase_text(best[1]['test_ppl'], dense_ppl) if dense_ppl else '-'} | | | | | | | |"
            )
    return out


def _goals(rows: list[Row], work: Path, dense: dict | None, tier: str = "quick") -> list[str]:
    """One line per row, every cell computed from the table's results."""
    if not dense or "test_ppl" not in dense:
        return ["The dense control has not run yet."]
    goals = GOALS if tier == "quick" else CONVERGED_GOALS
    out = [
        "| budget | autoshrink | best uniform | small dense | beats best uniform | beats small dense | goal | met "
        f"| per-site plan, increase <= {SEARCH_GOAL:g}x the best uniform's |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        auto = result_of(work, row.name, "autoshrink")
        auto = auto if auto and "test_ppl" in auto else None
        best = best_uniform(row, work, tier)
        small = result_of(work, row.name, SMALL_DENSE)
        small = small if small and "test_ppl" in small else None
        a = increase_text(auto["test_ppl"], dense["test_ppl"]) if auto else "not run"
        b = (
            "none reaches it or not run"
            if best is None
            else (f"{best[1].get('method', best[0])} {increase_text(best[1]['test_ppl'], dense['test_ppl'])}")
        )
        c = (
            "-"
            if row.roles is not None
            else ("not run" if small is None else increase_text(small["test_ppl"], dense["test_ppl"]))
        )

        def beats(other: dict | None) -> str:
            if auto is None or other is None:
                return "-"
            if auto["test_ppl"] == other["test_ppl"]:
                return "tie"
            return "yes" if auto["test_ppl"] < other["test_ppl"] else "no"

        goal = goals.get(row.name)
        met = (
            "-"
            if goal is None or auto is None
            else ("yes" if auto["test_ppl"] / dense["test_ppl"] - 1 <= goal / 100 else "no")
        )
        out.append(
            f"| {row.name} | {a} | {b} | {c} | {beats(best[1] if best else None)} | {beats(small)} | "
            f"{'-' if goal is None else f'within {goal:g}%'} | {met} | "
            f"{_beats_seeds(row, work, auto, best[1] if best else None, dense, tier)} |"
        )
    return out


def _beats_seeds(row: Row, work: Path, auto: dict | None, best: dict | None, dense: dict, tier: str) -> str:
    """Issue 15's goal: the trained plan is not a uniform one and its increase over the dense
    control is at most SEARCH_GOAL times the best uniform plan's."""
    if auto is None or best is None:
        return "-"
    uniform = is_uniform(row, work, auto, tier)
    if uniform:
        return f"no: the uniform {uniform} plan"
    return increase_verdict(auto["test_ppl"] / dense["test_ppl"] - 1, best["test_ppl"] / dense["test_ppl"] - 1)


def increase_verdict(ours: float, theirs: float) -> str:
    """Issue 15's verdict on a per-site plan's increase over the dense control against the best
    uniform plan's: "yes (0.44x)", "no (0.93x)", or the cases without a ratio."""
    if theirs <= 0:
        return "no: the best uniform plan is no worse than dense" if ours > theirs else "yes"
    if ours <= 0:  # no increase at all: a ratio below zero reads as nonsense
        return "yes (no worse than the dense control)"
    ratio = ours / theirs
    return f"{'yes' if ratio <= SEARCH_GOAL else 'no'} ({ratio:.2f}x)"


def plot(rows: list[Row], work: Path, dense: dict | None, path: Path, title: str = "kjv-lstm") -> bool:
    """Test perplexity against stored bytes for the whole-model rows, one marker per entrant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row.roles is not None:
            continue
        for entrant in _entrants(row, work) + [SMALL_DENSE] * (SMALL_DENSE not in _entrants(row, work)):
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


def converged(setup, rows: list[Row], sizes: dict) -> list[str]:
    work = setup.converged_work
    dense = result_of(work, "dense", "dense")
    if not rows:
        return ["No converged row was asked for."]
    return [
        f"Entrants in {work}; `python -m autoshrink.bench --tier converged` trains what is missing (resumable).",
        "",
        *_table(sizes, rows, work, dense, tier="converged"),
        *stale_plans(setup, rows),
        "",
        *_goals(rows, work, dense, tier="converged"),
    ]


def stale_plans(setup, rows: list[Row]) -> list[str]:
    """A line for each converged autoshrink entrant that trained another plan than the quick tier's
    search now trains (the quick tier was searched again since): it is an earlier search's plan."""
    lines = []
    for row in rows:
        done = result_of(setup.converged_work, row.name, "autoshrink")
        quick = result_of(setup.work, row.name, "autoshrink")
        if done and quick and "plan" in done and "plan" in quick and done["plan"] != quick["plan"]:
            lines.append(
                f"- {row.name}: the converged autoshrink entrant trained the plan of an earlier quick-tier search "
                f"(measured at {done.get('commit', '?')}); the quick tier's search now trains another plan "
                f"(measured at {quick.get('commit', '?')})."
            )
    return [""] + lines if lines else []


README_BEGIN = (
    "<!-- benchmark goals: written by `python -m autoshrink.bench --report-only` from results/BENCHMARK.md -->"
)
README_END = "<!-- end of benchmark goals -->"


def goal_lines(setup, rows: list[Row]) -> list[str]:
    """Both tiers' goal tables, the same lines BENCHMARK.md holds: what README.md may claim."""
    converged_rows = [r for r in rows if r.name in CONVERGED_ROWS]
    converged_dense = result_of(setup.converged_work, "dense", "dense")
    return [
        f"Quick tier ({setup.steps} final-training steps for every entrant):",
        "",
        *_goals(rows, setup.work, result_of(setup.work, "dense", "dense")),
        "",
        f"Converged tier (to a plateau, at most {CONVERGED_EPOCHS:g} epochs, distilled):",
        "",
        *(_goals(converged_rows, setup.converged_work, converged_dense, tier="converged") if converged_rows else ["-"]),
    ]


def readme_block(text: str, lines: list[str]) -> str:
    """`text` (README.md) with the lines between README_BEGIN and README_END replaced by `lines`."""
    try:
        head, rest = text.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
    except ValueError:
        raise ValueError(f"README.md has no block between {README_BEGIN!r} and {README_END!r}") from None
    return "\n".join([head + README_BEGIN, *lines, README_END]) + tail


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
        "# autoshrink benchmark results",
        "",
        f"The protocol is docs/benchmark.md: the reference model `{setup.model_name}` on the KJV corpus. This file is "
        "written by one command; each included report names its own.",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {torch.get_num_threads()} thread(s) per process; "
        f"this 2-core machine also ran other jobs, so times are indicative), torch {torch.__version__}, commit {commit()}, "
        f"`{command}`.",
        "",
        "Two tiers of final training (protocol 2, issue 16). **Quick:** every trained entrant, the dense control "
        f"included, gets **{setup.steps} steps** (batch 32 x 35 tokens, train_lm's recipe: Adam with warm-up and cosine "
        "decay, 5 validations, best validated state kept, the starting weights included) without distillation. "
        f"**Converged:** the rows {' and '.join(CONVERGED_ROWS)}, trained until validation stops improving (at most "
        f"{CONVERGED_EPOCHS:g} epochs), distilled from the dense model. "
        f"autoshrink first searches ({setup.trials} trials of {setup.finetune_steps} fine-tuning steps, the "
        "row's search space) and trains its front's best plan (the converged tier trains the quick tier's search). "
        "Single methods are applied uniformly (every site of the scope the same share of its dense bytes), their size "
        "knob fitted so the whole model just meets the limit, each at its best storage width (fp32, 16, 8 or 4 bits: "
        "the lowest validation perplexity at initialisation, bench/entrants.py), initialised as autoshrink's methods "
        "are. The best uniform plan is the single method with the lowest validation perplexity. The small dense model "
        "is the reference architecture with equal embedding and hidden sizes, the largest that fits the budget at "
        "8 bits, trained from scratch at the reference model's pretraining learning rate (the compressed entrants' "
        "lower rate is for fine-tuning a trained model). Rows measured under the earlier protocol (fp32 singles, the old recipe) say "
        "so in their last column. Test perplexity is over the whole test split "
        f"({len(setup.lm.test):,} tokens); "
        "stored bytes are checked against the exported file; ratio is of the scope (dense fp32 bytes of its sites / "
        "their stored bytes); latency is batch 1 x 35 tokens on the CPU; tokens/s is test-evaluation throughput; wall "
        "time is search + final training.",
        "",
        f"## The reference model `{setup.model_name}`",
        "",
        f"{setup.dense_bytes:,} bytes fp32 ({sum(p.numel() for p in setup.dense.parameters()):,} parameters); "
        f"pretrained by `{pre.get('command', 'autoshrink pretrain')}`: validation perplexity {pre.get('val_ppl', '?')}, "
        f"test {pre.get('test_ppl', '?')} after {pre.get('epochs', '?')} epochs ({pre.get('steps', '?')} steps, "
        f"{pre.get('seconds', 0) / 60:.1f} min at {pre.get('tokens_per_s', '?')} tokens/s on {pre.get('threads', '?')} thread(s)).",
        "",
        "## Whole model at 10x, 25x, 50x, 100x",
        "",
        *_table(sizes, whole, work, dense),
        "",
        "![test perplexity against stored bytes](benchmark.png)",
        "",
        "## At the papers' own scopes",
        "",
        *_table(sizes, scoped, work, dense),
        "",
        *[f"- {r.name}: {PAPER[r.name]}." for r in scoped if r.name in PAPER],
        "",
        "## Against the goals (quick tier)",
        "",
        *_goals(rows, work, dense),
        "",
        "## Converged tier",
        "",
        *converged(setup, [r for r in rows if r.name in CONVERGED_ROWS], sizes),
        "",
        "## Search cost",
        "",
        f"- Peak RSS of a search on the reference model: {max(peaks) / 1e9:.2f} GB (largest of {len(peaks)} searches)."
        if peaks
        else "- No search has run yet.",
        *[
            f"- {r.name}: {s['search_seconds'] / 60:.1f} min for {s['trials']} trials, "
            f"{'with' if _warm(_search_dir(work, r.name, s)) else 'without'} warm start (`{s['search_command']}`)"
            for r, s in zip(rows, searches)
            if s and "search_seconds" in s
        ],
        "",
    ]
    for name, title in INCLUDED:
        path = out_dir / name
        if path.is_file():
            body = path.read_text().strip().splitlines()
            body = [("#" + line if line.startswith("#") else line) for line in body]  # nest its headings under ours
            lines += [f"## {title} ([{name}]({name}))", "", *body, ""]
    return "\n".join(lines) + "\n"
