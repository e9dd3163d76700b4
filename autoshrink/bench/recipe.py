"""The final-training recipe, measured (issue 16): validation perplexity against training steps.

    python -m autoshrink.bench.recipe            # every run not done yet, one after another; then the report
    python -m autoshrink.bench.recipe --report-only
    python -m autoshrink.bench.recipe --plan-from RUN --trial 0 --steps 600 --work W --out O
                                                 # the same runs on the plan of a search's trial

On `kjv-lstm` with a 25x plan: by default the one a search seeds first (low-rank on every site,
8-bit factors, rank fitted to the budget: budget.uniform_plan as search/warm_start.py builds it);
with --plan-from, the plan of one trial of a run folder (the allocated plan autoshrink trains),
compressed afresh and data-aware as `autoshrink train` does. Each run trains with `train_lm`'s
recipe (warm-up + cosine decay to the step cap, validation every EVAL_EVERY steps on the whole
valid split, stop after `patience` validations without improvement, best state kept) at one
learning rate, with or without distillation from the dense model; then the dense control with the
best of those settings (a dense run already measured with them is not run twice). Each run is
final training's own (train_plan: checkpointed at every validation in WORK/<run>/, so a killed run
resumes there); a finished run is kept in WORK/<run>.json and skipped when the command runs
again. Writes OUT/recipe.md and OUT/recipe.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from autoshrink.bench.report import commit, write_report
from autoshrink.final.train import CHECKPOINT_STATE

WORK = Path("results/runs/recipe")
STEPS = 1500
EVAL_EVERY = 100
BUDGET = 25  # whole-model ratio of the plan


@dataclass(frozen=True)
class Run:
    name: str
    plan: str  # "25x" or "dense"
    lr: float | None  # None: the best lr of the 25x runs
    distill: float | None  # distillation weight; None: the best setting of the 25x runs


RUNS = [
    Run("25x-lr2e-3-distill", "25x", 2e-3, 0.5),
    Run("25x-lr2e-3-plain", "25x", 2e-3, 0.0),
    Run("25x-lr5e-4-distill", "25x", 5e-4, 0.5),
    Run("25x-lr5e-4-plain", "25x", 5e-4, 0.0),
    Run("dense-best", "dense", None, None),
    Run("dense-lr5e-4-distill", "dense", 5e-4, 0.5),  # the dense control of final training's default
]


def plan_25x(dense, lm) -> dict:
    from autoshrink.plan.fit import uniform_plan
    from autoshrink.methods import config_class
    from autoshrink.models import discover_sites
    from autoshrink.plan import ModelFile, dense_bytes
    from autoshrink.search.warm_start import PREFERRED_BITS

    base = config_class("lowrank")(bits=PREFERRED_BITS)
    sites = discover_sites(dense)
    plan = uniform_plan(base, sites, int(dense_bytes(dense) // BUDGET), lm.vocab.freqs, ModelFile.of(dense, sites))
    return {name: cfg.to_dict() for name, cfg in plan.items()}


def plan_of(plan_from: tuple[str, int]) -> dict:
    from autoshrink.final.train import choose_trial

    return choose_trial(*plan_from)[1]


def plan_label(plan_from: tuple[str, int] | None) -> str:
    if plan_from is None:
        return f"the uniform low-rank plan at {BUDGET}x with 8-bit factors (the search's first warm-start seed)"
    return f"the plan of trial {plan_from[1]} of `{plan_from[0]}`"


def best_of(results: dict[str, dict]) -> tuple[float, float] | None:
    """(lr, distill weight) of the 25x run with the lowest best validation perplexity."""
    done = [r for r in results.values() if r["plan"] == "25x"]
    if not done:
        return None
    best = min(done, key=lambda r: r["best_val_ppl"])
    return best["lr"], best["distill"]


def run_one(
    run: Run,
    results: dict,
    work: Path,
    steps: int,
    plan_from: tuple[str, int] | None = None,
    model_name: str = "kjv-lstm",
    data: str = "kjv",
) -> dict:
    """Train one run (its 25x plan: `plan_from`'s (run folder, trial), else the uniform seed)
    with final training's own code (train_plan: checkpointed at every validation,
    so a killed run resumes where it was), then record it in WORK/<run>.json."""
    from autoshrink.models.load import load
    from autoshrink.data import load_lm_data
    from autoshrink.final.train import train_plan

    dense = load(model_name, data=data)
    lm = load_lm_data(data, vocab=dense.vocab)
    chosen = best_of(results)
    lr = run.lr if run.lr is not None else chosen[0]
    distill = run.distill if run.distill is not None else chosen[1]
    same = [
        r for r in results.values() if r["plan"] == run.plan == "dense" and (r["lr"], r["distill"]) == (lr, distill)
    ]
    if same:  # dense-best resolved to settings a dense run already measured: the same training, not run twice
        record = {**same[0], "name": run.name}
        (work / f"{run.name}.json").write_text(json.dumps(record, indent=1) + "\n")
        return record
    plan = {} if run.plan == "dense" else plan_of(plan_from) if plan_from else plan_25x(dense, lm)
    print(f"== {run.name}: lr {lr:g}, distill {distill:g}", flush=True)
    final = train_plan(
        dense,
        lm,
        plan,
        work / run.name,
        steps,
        label=run.name,
        corpus=data,
        device="cpu",
        distill=bool(distill),
        evals=max(1, steps // EVAL_EVERY),
        options={"lr": lr, "distill_weight": distill},
        on_log=lambda r: print(
            f"step {r['step']}/{r['steps']} loss {r['loss']:.3f} lr {r['lr']:.2e} "
            f"{r['tokens_per_s']:.0f} tok/s eta {r['eta_s'] / 60:.1f} min",
            flush=True,
        ),
        on_eval=lambda step, ppl: print(f"step {step}: val {ppl:.2f}", flush=True),
        log=lambda line: print(line, flush=True),
    )
    m = final.metrics
    history = m["history"]
    best = min((h for h in history), key=lambda h: h["val_ppl"])
    record = {
        "name": run.name,
        "plan": run.plan,
        "plan_json": plan,
        "plan_source": plan_label(plan_from),
        "lr": lr,
        "distill": distill,
        "steps_cap": steps,
        "steps": m["steps"],
        "stopped": m.get("stopped"),
        "best_step": best["step"],
        "best_val_ppl": m["val_ppl"],
        "start_val_ppl": start_val(history),
        "test_ppl": m["test_ppl"],
        "stored_bytes": m["stored_bytes"],
        "seconds": m["seconds"],
        "step_seconds": m["seconds"] / max(1, m["steps"]),
        "history": history,
        "commit": commit(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    (work / f"{run.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def load_results(work: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}


def in_progress(work: Path) -> dict[str, dict]:
    """Runs started but not finished: their checkpoint's validations so far."""
    out = {}
    for run in RUNS:
        state = work / run.name / "checkpoint" / CHECKPOINT_STATE
        if state.is_file() and not (work / f"{run.name}.json").is_file():
            out[run.name] = json.loads(state.read_text())
    return out


def plot(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("25x", "dense")):
        for r in results.values():
            if r["plan"] != kind:
                continue
            steps = [h["step"] for h in r["history"]]
            ax.plot(
                steps,
                [h["val_ppl"] for h in r["history"]],
                marker=".",
                label=f"lr {r['lr']:g}, {'distill ' + format(r['distill'], 'g') if r['distill'] else 'no distillation'}",
            )
        ax.set_xlabel("training steps (batch 32 x 35 tokens)")
        ax.set_ylabel("validation perplexity")
        ax.set_title(f"kjv-lstm, the {BUDGET}x plan" if kind == "25x" else "kjv-lstm dense control")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if any(ax.lines for ax in axes[:1]):
        axes[0].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def start_val(history: list[dict]) -> float | None:
    """The untrained model's validation (step 0), None where the plan's ramps (pruning, doping)
    kept training from validating it as stored."""
    return next((h["val_ppl"] for h in history if h["step"] == 0), None)


def _ppl(value: float | None) -> str:
    return "- (ramp)" if value is None else f"{value:.2f}"


def comparisons(results: dict[str, dict]) -> list[str]:
    """Sentences comparing the 25x runs that differ in one setting: distillation at each lr, the lr
    with each distillation setting (best validation perplexity; test perplexity beside it)."""
    runs = {(r["lr"], r["distill"]): r for r in results.values() if r["plan"] == "25x"}
    out = []
    for (lr, distill), r in sorted(runs.items()):
        plain = runs.get((lr, 0.0))
        if distill and plain is not None:
            out.append(_versus(f"at lr {lr:g}, distillation {distill:g} against none", r, plain))
    lrs = sorted({lr for lr, _ in runs})
    for distill in sorted({d for _, d in runs}):
        if len(lrs) == 2 and all((lr, distill) in runs for lr in lrs):
            a, b = (runs[(lr, distill)] for lr in lrs)
            out.append(_versus(f"with distillation {distill:g}, lr {lrs[0]:g} against {lrs[1]:g}", a, b))
    return out


def _versus(what: str, a: dict, b: dict) -> str:
    gap = 100 * (a["best_val_ppl"] / b["best_val_ppl"] - 1)
    return (
        f"{what[0].upper() + what[1:]}: val {a['best_val_ppl']:.2f} against {b['best_val_ppl']:.2f} ({gap:+.1f}%), "
        f"test {a['test_ppl']:.2f} against {b['test_ppl']:.2f}."
    )


def markdown(
    results: dict[str, dict], command: str, running: dict[str, dict] | None = None, plan_source: str | None = None
) -> str:
    rows = [
        "| run | lr | distillation | start val | best val (step) | test | steps (stopped by) | s/step (with validation) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in RUNS:
        r = results.get(run.name)
        if r is None and run.name in (running or {}):
            h = running[run.name]["history"]
            best = min(h, key=lambda e: e["val_ppl"])
            rows.append(
                f"| {run.name} | {run.lr if run.lr is not None else '?'} | {run.distill if run.distill is not None else '?'} | "
                f"{_ppl(start_val(h))} | {best['val_ppl']:.2f} ({best['step']}) so far | | in progress: step "
                f"{running[run.name]['step']} | |"
            )
            continue
        if r is None:
            rows.append(f"| {run.name} | | | not run yet | | | | |")
            continue
        rows.append(
            f"| {run.name} | {r['lr']:g} | {r['distill']:g} | {_ppl(start_val(r['history']))} | "
            f"{r['best_val_ppl']:.2f} ({r['best_step']}) | {r['test_ppl']:.2f} | {r['steps']} ({r['stopped'] or '-'}) | "
            f"{r['step_seconds']:.2f} |"
        )
    chosen = best_of(results)
    verdict = (
        "No 25x run has finished yet."
        if chosen is None
        else f"Best 25x setting (lowest best validation perplexity): lr {chosen[0]:g}, distillation weight "
        f"{chosen[1]:g} on {plan_source or plan_label(None)}."
    )
    verdict = " ".join([verdict, *comparisons(results)])
    dense = results.get("dense-best")
    dense_line = (
        "The dense control has not run yet."
        if dense is None
        else f"The dense control starts at val {start_val(dense['history']):.2f} and ends at val {dense['best_val_ppl']:.2f} "
        f"(best state at step {dense['best_step']}; test {dense['test_ppl']:.2f}): "
        + (
            "not worse than its checkpoint."
            if dense["best_val_ppl"] <= start_val(dense["history"])
            else "WORSE than its checkpoint."
        )
    )
    commits = sorted({r["commit"] for r in results.values()})
    return (
        "\n".join(
            [
                "# The final-training recipe, measured",
                "",
                f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, 1 thread per run; a shared 2-core machine, so "
                f"s/step is indicative), torch {torch.__version__}, commit(s) {', '.join(commits) or '-'}, `{command}`.",
                "",
                f"`kjv-lstm` compressed by {plan_source or plan_label(None)} (data-aware initialisation), "
                "trained by `train_lm`: Adam, batch 32 x 35, 5% warm-up then "
                f"cosine decay to the step cap ({', '.join(sorted({str(r['steps_cap']) for r in results.values()})) or STEPS}), "
                f"validation on the whole valid split every {EVAL_EVERY} steps, stop after 3 "
                "validations without improvement, best validated state restored (the starting weights included). "
                "Distillation: (1 - w) CE + w KL(teacher || student) at temperature 1 against the dense model, which carries "
                "its own state across windows.",
                "",
                *rows,
                "",
                verdict,
                "",
                dense_line,
                "",
                *(["![validation perplexity against steps](recipe.png)", ""] if results else []),
            ]
        )
        + "\n"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autoshrink.bench.recipe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runs", nargs="+", default=[r.name for r in RUNS], choices=[r.name for r in RUNS], metavar="RUN")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--work", default=str(WORK))
    p.add_argument("--out", default="results")
    p.add_argument("--plan-from", metavar="RUN", help="train the plan of a trial of this run folder [the uniform seed]")
    p.add_argument("--trial", default="best", help="the trial of --plan-from: a number or best [best]")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    plan_from = (args.plan_from, args.trial) if args.plan_from else None
    work, out = Path(args.work), Path(args.out)
    command = "python -m autoshrink.bench.recipe " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.report_only:
        for run in RUNS:
            if run.name in args.runs and not (work / f"{run.name}.json").is_file():
                run_one(run, load_results(work), work, args.steps, plan_from)
                _report(work, out, command, plan_from)
    _report(work, out, command, plan_from)
    return 0


def _report(work: Path, out: Path, command: str, plan_from: tuple[str, int] | None = None) -> None:
    results = load_results(work)
    out.mkdir(parents=True, exist_ok=True)
    if results:
        plot(results, out / "recipe.png")
    write_report(out / "recipe.md", markdown(results, command.strip(), in_progress(work), plan_label(plan_from)))


if __name__ == "__main__":
    raise SystemExit(main())
