"""Does the search rank plans as final training does? Rank correlation, over the plans of one run,
of the search's two cheap signals with the plan's test perplexity after the same final training.

    python -m autoshrink.bench.correlation RUN_DIR [RUN_DIR ...] [--plans 10] [--steps 300] [--out results/correlation.md]
        [--report-only]

Signals: the **proxy** (the plan's validation perplexity untrained, data-aware build: what the
profile, the knapsack and the refinement optimise) and the **trial** (its validation perplexity
after the search's fine-tuning). Target: test perplexity over the whole test split after
`autoshrink train RUN --trial N --steps S --no-trial-weights` (distilled; every plan compressed
afresh, so a front trial's kept weights give it no head start), the same for every plan. Up to
`--plans` feasible completed trials are taken, spread evenly over the
range of the trials' perplexities; several RUN_DIRs of one model and budget pool their trials
(each distinct plan once). Each plan's figures go to RUN/correlation/<n>.json as they are
measured, and its final training to RUN/correlation/final-<n> (resumable), so a rerun continues.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from torch import nn

from autoshrink.bench.report import commit, write_report
from autoshrink.calibrate import DEFAULT_TOKENS, calibrate
from autoshrink.data import LMData, load_lm_data
from autoshrink.errors import UserError
from autoshrink.final.config import TrainConfig
from autoshrink.final.train import train_trial
from autoshrink.models.load import load
from autoshrink.plan import parse_plan, untrained_perplexity
from autoshrink.search import run_folder
from autoshrink.search.study import load_study
from autoshrink.search.trial import TrialSettings, val_slice


def _done(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.user_attrs.get("feasible")]


def _spread(items: list, plans: int, ppl) -> list:
    """`plans` of `items`, spread evenly over their perplexities `ppl(item)`, lowest first."""
    items = sorted(items, key=ppl)
    if len(items) <= plans:
        return items
    picks = sorted({round(i * (len(items) - 1) / (plans - 1)) for i in range(plans)})
    return [items[i] for i in picks]


def chosen_trials(study, plans: int) -> list:
    """Feasible completed trials, `plans` of them spread evenly over their validation perplexities."""
    return _spread(_done(study), plans, lambda t: t.user_attrs["val_ppl"])


def pooled_trials(run_dirs: Sequence[Path], plans: int) -> list[tuple[Path, Any]]:
    """(run folder, trial) over several runs of one model and budget: each distinct plan once (its
    first run's trial), `plans` of them spread evenly over their validation perplexities."""
    seen, pool = set(), []
    for run_dir in run_dirs:
        for t in _done(load_study(run_dir)):
            key = json.dumps(t.user_attrs["plan"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                pool.append((run_dir, t))
    return _spread(pool, plans, lambda item: item[1].user_attrs["val_ppl"])


def spearman(a: list[float], b: list[float]) -> float:
    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


@dataclass
class RunSetup:
    """What a run's plans are built from, as its search built them: the dense model, the corpus and
    the calibration statistics of the data-aware builds (None: plain builds)."""

    info: dict
    dense: nn.Module
    lm: LMData
    stats: dict | None

    @property
    def corpus(self) -> str:
        return self.info.get("data_path") or self.info["data"]

    @property
    def calibration_tokens(self) -> int:
        tokens = self.info.get("calibration_tokens")
        return DEFAULT_TOKENS if tokens is None else tokens

    @property
    def eval_tokens(self) -> int | None:
        return self.info.get("eval_tokens", TrialSettings.eval_tokens)

    def proxy_ppl(self, plan_json: dict) -> float:
        """The plan's validation perplexity untrained (data-aware build, the trials' validation slice)."""
        valid = self.lm.valid if self.eval_tokens is None else self.lm.valid[: self.eval_tokens]
        return untrained_perplexity(self.dense, parse_plan(plan_json), valid, self.lm.vocab.freqs, self.stats)


def load_setup(info: dict) -> RunSetup:
    """The run's dense model, corpus and calibration statistics (run.json's `info`)."""
    corpus = info.get("data_path") or info["data"]
    dense = load(info["model"], data=corpus)
    lm = load_lm_data(corpus, vocab=dense.vocab)
    setup = RunSetup(info, dense, lm, None)
    tokens = setup.calibration_tokens
    setup.stats = calibrate(dense, lm.train, tokens=tokens, freqs=lm.vocab.freqs) if tokens else None
    return setup


def measure(
    run_dirs: Path | Sequence[Path], plans: int, steps: int, log=print, measured_only: bool = False
) -> list[dict]:
    """Each chosen plan's proxy, trial and test figures (RUN/correlation/<n>.json, reused); with
    `measured_only`, only those measured already (nothing is trained)."""
    run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    rows, setups = [], {}
    for run_dir, t in pooled_trials(run_dirs, plans):
        work = run_dir / "correlation"
        work.mkdir(exist_ok=True)
        path, final = work / f"{t.number}.json", work / f"final-{t.number}"
        if path.is_file():
            row = json.loads(path.read_text())
            if row.get("start") == "fresh":
                rows.append(row)
                continue
        if measured_only:
            continue
        if path.is_file() or _started_otherwise(final):
            _set_aside(path, final)  # trained (or begun) from a front trial's kept weights: unequal training
        if run_dir not in setups:
            setups[run_dir] = load_setup(run_folder.read_run(run_dir))
        proxy = setups[run_dir].proxy_ppl(t.user_attrs["plan"])
        log(
            f"{run_dir} trial {t.number}: proxy {proxy:.2f}, trial {t.user_attrs['val_ppl']:.2f}; "
            f"final training {steps} steps"
        )
        final = train_trial(
            run_dir,
            # every plan compressed afresh: a front trial's kept weights would give it 80 steps more
            TrainConfig(
                trial=str(t.number), steps=steps, evals=4, out=str(work / f"final-{t.number}"), trial_weights=False
            ),
            log=log,
        )
        row = {
            "run": str(run_dir),
            "trial": t.number,
            "stored_bytes": t.user_attrs["stored_bytes"],
            "proxy_ppl": proxy,
            "trial_ppl": t.user_attrs["val_ppl"],
            "test_ppl": final.metrics["test_ppl"],
            "steps": steps,
            "start": "fresh",
            "commit": commit(),
        }
        path.write_text(json.dumps(row, indent=1) + "\n")
        rows.append(row)
    return rows


def _started_otherwise(final: Path) -> bool:
    """Whether an unfinished final training began other than compressed afresh (or did not record how)."""
    state = final / "checkpoint" / "state.json"
    return state.is_file() and json.loads(state.read_text()).get("start") != "fresh"


def _set_aside(row: Path, final: Path) -> None:
    """A plan measured before every plan was compressed afresh: kept beside, as <name>.kept-weights."""
    for p in (row, final):
        if p.exists():
            stem, suffix = (p.name.removesuffix(".json"), ".json") if p.suffix == ".json" else (p.name, "")
            aside, n = p.with_name(f"{stem}.kept-weights{suffix}"), 1
            while aside.exists():  # set aside before: keep both
                aside, n = p.with_name(f"{stem}.kept-weights-{n}{suffix}"), n + 1
            p.rename(aside)


def markdown(rows: list[dict], run_dirs: Path | Sequence[Path], command: str) -> str:
    run_dirs = [Path(run_dirs)] if isinstance(run_dirs, (str, Path)) else [Path(r) for r in run_dirs]
    info = run_folder.read_run(run_dirs[0])
    several = len(run_dirs) > 1
    table = [
        ("| run " if several else "")
        + "| trial | stored bytes | proxy: untrained val ppl | trial val ppl | test ppl after final training |"
    ]
    table.append(("|---" if several else "") + "|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["test_ppl"]):
        table.append(
            (f"| {Path(r.get('run', run_dirs[0])).name} " if several else "")
            + f"| {r['trial']} | {r['stored_bytes']:,} | {r['proxy_ppl']:.2f} | {r['trial_ppl']:.2f} | {r['test_ppl']:.2f} |"
        )
    test = [r["test_ppl"] for r in rows]
    source = ", ".join(f"`{r}`" for r in run_dirs)
    lines = [
        f"## Does the search rank plans as final training does? ({info['model']}, {info['budget']})",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}), commit(s) {', '.join(sorted({r['commit'] for r in rows}))}, "
        f"`{command}`. {len(rows)} distinct feasible completed trials of {source} ({info['finetune_steps']} fine-tuning "
        f"steps each), spread over their perplexities; validation perplexities on the {val_slice(info.get('eval_tokens'))}; "
        f"final training {rows[0]['steps'] if rows else '-'} steps each (distilled, every plan compressed afresh), test "
        "perplexity over the whole test split.",
        "",
        *table,
        "",
    ]
    if len(rows) >= 3:
        lines.append(
            f"Spearman rank correlation with the test perplexity: proxy {spearman([r['proxy_ppl'] for r in rows], test):+.2f}, "
            f"trial {spearman([r['trial_ppl'] for r in rows], test):+.2f} (over {len(rows)} plans"
            + ("" if len(rows) >= 8 else "; fewer than the 8 the issue asks for")
            + ")."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m autoshrink.bench.correlation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="search run folders of one model and budget")
    p.add_argument("--plans", type=int, default=10)
    p.add_argument("--steps", type=int, default=300, help="final-training steps of every plan")
    p.add_argument("--out", default="results/correlation.md")
    p.add_argument("--report-only", action="store_true", help="only write the report from the plans measured so far")
    args = p.parse_args(argv)
    run_dirs = [Path(r) for r in args.run_dirs]
    try:
        infos = [run_folder.read_run(r) for r in run_dirs]
    except UserError as e:
        p.error(str(e))
    if any("finetune_steps" not in i for i in infos):
        p.error("a run folder has no trials (an `autoshrink profile` folder?): give search run folders")
    if (
        len({(i["model"], i.get("data"), i.get("max_bytes"), i["finetune_steps"], i.get("eval_tokens")) for i in infos})
        > 1
    ):
        p.error("the run folders must search one model and corpus under one budget with the same trial settings")
    if args.plans < 2 or args.steps < 1:
        p.error("--plans must be at least 2 and --steps at least 1")
    try:
        rows = measure(
            run_dirs, args.plans, args.steps, log=lambda line: print(line, flush=True), measured_only=args.report_only
        )
    except UserError as e:
        p.error(str(e))
    if not rows:
        p.error("no plan of these run folders has been measured yet: run without --report-only")
    command = (
        f"python -m autoshrink.bench.correlation {' '.join(args.run_dirs)} --plans {args.plans} --steps {args.steps}"
    )
    write_report(args.out, markdown(rows, run_dirs, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
