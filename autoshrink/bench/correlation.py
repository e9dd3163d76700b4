"""Does the search rank plans as final training does? Rank correlation, over the plans of one run,
of the search's two cheap signals with the plan's test perplexity after the same final training.

    python -m autoshrink.bench.correlation RUN_DIR [--plans 10] [--steps 300] [--out results/correlation.md]

Signals: the **proxy** (the plan's validation perplexity untrained, data-aware build: what the
profile, the knapsack and the refinement optimise) and the **trial** (its validation perplexity
after the search's fine-tuning). Target: test perplexity over the whole test split after
`autoshrink train RUN --trial N --steps S` (distilled; starting from the trial's kept weights), the
same for every plan. Up to `--plans` feasible completed trials are taken, spread evenly over the
range of the trials' perplexities. Each plan's figures go to RUN/correlation/<n>.json as they are
measured, and its final training to RUN/correlation/final-<n> (resumable), so a rerun continues.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch import nn

from autoshrink.bench.report import commit, write_report
from autoshrink.calibrate import DEFAULT_TOKENS, calibrate
from autoshrink.data import LMData, load_lm_data
from autoshrink.final.config import TrainConfig
from autoshrink.final.train import train_trial
from autoshrink.models.load import load
from autoshrink.plan import parse_plan, untrained_perplexity
from autoshrink.search import run_folder
from autoshrink.search.study import load_study
from autoshrink.search.trial import TrialSettings, val_slice


def chosen_trials(study, plans: int) -> list:
    """Feasible completed trials, `plans` of them spread evenly over their validation perplexities."""
    done = sorted(
        (t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.user_attrs.get("feasible")),
        key=lambda t: t.user_attrs["val_ppl"],
    )
    if len(done) <= plans:
        return done
    picks = sorted({round(i * (len(done) - 1) / (plans - 1)) for i in range(plans)})
    return [done[i] for i in picks]


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
    dense = load(info["model"], data=corpus, seed=info.get("seed", 0))
    lm = load_lm_data(corpus, vocab=dense.vocab)
    setup = RunSetup(info, dense, lm, None)
    tokens = setup.calibration_tokens
    setup.stats = calibrate(dense, lm.train, tokens=tokens, freqs=lm.vocab.freqs) if tokens else None
    return setup


def measure(run_dir: Path, plans: int, steps: int, log=print) -> list[dict]:
    info = run_folder.read_run(run_dir)
    study = load_study(run_dir)
    work = run_dir / "correlation"
    work.mkdir(exist_ok=True)
    rows, setup = [], None
    for t in chosen_trials(study, plans):
        path = work / f"{t.number}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
            continue
        setup = setup or load_setup(info)
        proxy = setup.proxy_ppl(t.user_attrs["plan"])
        log(f"trial {t.number}: proxy {proxy:.2f}, trial {t.user_attrs['val_ppl']:.2f}; final training {steps} steps")
        final = train_trial(
            run_dir,
            TrainConfig(trial=str(t.number), steps=steps, evals=4, out=str(work / f"final-{t.number}")),
            log=log,
        )
        row = {
            "trial": t.number,
            "stored_bytes": t.user_attrs["stored_bytes"],
            "proxy_ppl": proxy,
            "trial_ppl": t.user_attrs["val_ppl"],
            "test_ppl": final.metrics["test_ppl"],
            "steps": steps,
            "commit": commit(),
        }
        path.write_text(json.dumps(row, indent=1) + "\n")
        rows.append(row)
    return rows


def markdown(rows: list[dict], run_dir: Path, command: str) -> str:
    info = run_folder.read_run(run_dir)
    table = ["| trial | stored bytes | proxy: untrained val ppl | trial val ppl | test ppl after final training |"]
    table.append("|---:|---:|---:|---:|---:|")
    for r in sorted(rows, key=lambda r: r["test_ppl"]):
        table.append(
            f"| {r['trial']} | {r['stored_bytes']:,} | {r['proxy_ppl']:.2f} | {r['trial_ppl']:.2f} | {r['test_ppl']:.2f} |"
        )
    test = [r["test_ppl"] for r in rows]
    lines = [
        f"## Does the search rank plans as final training does? ({info['model']}, {info['budget']})",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}), commit(s) {', '.join(sorted({r['commit'] for r in rows}))}, "
        f"`{command}`. {len(rows)} feasible completed trials of `{run_dir}` ({info['finetune_steps']} fine-tuning "
        f"steps each), spread over their perplexities; validation perplexities on the {val_slice(info.get('eval_tokens'))}; "
        f"final training {rows[0]['steps'] if rows else '-'} steps each (distilled, from the trial's kept weights), test "
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
    p.add_argument("run_dir")
    p.add_argument("--plans", type=int, default=10)
    p.add_argument("--steps", type=int, default=300, help="final-training steps of every plan")
    p.add_argument("--out", default="results/correlation.md")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    rows = measure(run_dir, args.plans, args.steps, log=lambda line: print(line, flush=True))
    command = f"python -m autoshrink.bench.correlation {args.run_dir} --plans {args.plans} --steps {args.steps}"
    write_report(args.out, markdown(rows, run_dir, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
