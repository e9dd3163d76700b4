"""How many torch threads to use on a small machine: training steps/s and evaluation tokens/s
of the presets at each thread count.

Each measurement runs in a fresh process (torch's thread pools are set once per process), the
thread counts alternate round by round so that a change in the machine's load hits all of them
alike, and each figure is the median of the rounds with its range. The load average before each
round is recorded: on a shared machine it decides the answer.

    python -m autoshrink.bench.threads [--models kjv-lstm-tiny kjv-lstm] [--threads 1 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from autoshrink.bench.report import commit, write_report

TRAIN_STEPS = {"kjv-lstm-tiny": 150, "kjv-lstm": 15}  # several seconds each on one core
MIN_EVAL_S = 2.0
EVAL_TOKENS = 12_000  # the slice a search validates on


def measure(model_name: str, threads: int) -> dict:
    """One round in this process: training steps/s (a trial's batch 32 x 35 tokens, validation
    excluded) and evaluation tokens/s over the search's validation slice."""
    torch.set_num_threads(threads)
    from autoshrink.models.load import load
    from autoshrink.data import load_lm_data
    from autoshrink.models.training import TrainConfig, evaluate_perplexity, train_lm

    model = load(model_name, device="cpu")
    data = load_lm_data("kjv", vocab=model.vocab)
    load_before = os.getloadavg()[0]
    steps = TRAIN_STEPS.get(model_name, 20)
    cfg = TrainConfig(steps=steps, batch_size=32, bptt=35, lr=1e-4, eval_every=steps, eval_tokens=350, device="cpu")
    trained = train_lm(model, data.train, data.valid, cfg)
    train_s = trained.seconds - trained.eval_seconds
    passes, start = 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - start < MIN_EVAL_S:  # a tiny model's pass is too short to time once
        evaluate_perplexity(model, data.valid, device="cpu", max_tokens=EVAL_TOKENS)
        passes += 1
    eval_s = time.perf_counter() - start
    return {
        "model": model_name,
        "threads": threads,
        "load_before": load_before,
        "train_steps_per_s": steps / train_s,
        "eval_tokens_per_s": passes * min(EVAL_TOKENS, len(data.valid)) / eval_s,
    }


def _spawn(model_name: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-m", "autoshrink.bench.threads", "--one", model_name, str(threads)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def rounds(rows: list[dict]) -> list[list[dict]]:
    """The rows grouped by round: one measurement of each thread count, taken back to back."""
    grouped: dict[tuple, list[dict]] = {}
    for r in rows:
        grouped.setdefault((r["run"], r["model"], r["round"]), []).append(r)
    return list(grouped.values())


def report(rows: list[dict]) -> str:
    commands = list(dict.fromkeys(r["command"] for r in rows))
    lines = [
        "# Torch threads on a small machine",
        "",
        f"CPU ({platform.machine()}, {', '.join(sorted({str(r['cores']) for r in rows}))} cores, shared with other "
        f"jobs), torch {torch.__version__}; measured by {', '.join(f'`{c}`' for c in commands)} at commit "
        f"{', '.join(dict.fromkeys(r.get('commit', '?') for r in rows))} (rounds accumulate in "
        "results/threads.json; `python -m autoshrink.bench.threads --report-only` rewrites this file).",
        "",
        "A round measures each thread count once, back to back, each in a fresh process, alternating which goes "
        "first, so both see nearly the same machine. Training: batch 32 x 35 tokens, as a trial fine-tunes "
        "(validation excluded); evaluation: the first 12,000 validation tokens, batch 10. Load: the 1-minute load "
        "average before each measurement (what else ran; this machine has 2 cores).",
        "",
        "| run | model | round | load before (1 / 2 threads) | training steps/s, 1 / 2 threads | 2 threads vs 1 | "
        "evaluation tokens/s, 1 / 2 threads | 2 threads vs 1 | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for group in rounds(rows):
        by = {r["threads"]: r for r in group}
        if set(by) != {1, 2}:
            continue
        one, two = by[1], by[2]
        notes = "; ".join(r["note"] for r in group if r.get("note"))
        lines.append(
            f"| {one['run']} | {one['model']} | {one['round'] + 1} | {one['load_before']:.2f} / {two['load_before']:.2f} | "
            f"{one['train_steps_per_s']:,.2f} / {two['train_steps_per_s']:,.2f} | "
            f"{two['train_steps_per_s'] / one['train_steps_per_s']:.2f}x | "
            f"{one['eval_tokens_per_s']:,.0f} / {two['eval_tokens_per_s']:,.0f} | "
            f"{two['eval_tokens_per_s'] / one['eval_tokens_per_s']:.2f}x | {notes} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["kjv-lstm-tiny", "kjv-lstm"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="results/threads.md")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the rounds measured so far")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return 0
    store = Path(args.out).with_suffix(".json")
    rows = json.loads(store.read_text()) if store.exists() else []
    command = " ".join(["python -m autoshrink.bench.threads", *argv])
    run = time.strftime("%Y-%m-%d %H:%M")
    if not args.report_only:
        for model_name in args.models:
            for round_ in range(args.rounds):
                order = args.threads if round_ % 2 == 0 else args.threads[::-1]
                for threads in order:
                    row = {
                        "run": run,
                        "command": command,
                        "commit": commit(),
                        "round": round_,
                        "cores": os.cpu_count(),
                        **_spawn(model_name, threads),
                    }
                    rows.append(row)
                    store.parent.mkdir(parents=True, exist_ok=True)
                    store.write_text(json.dumps(rows, indent=1))  # each round kept: a cut-off run loses nothing
                    print(json.dumps(row), file=sys.stderr, flush=True)
    write_report(args.out, report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
