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
import statistics
import subprocess
import sys
import time

import torch

from autoshrink.bench.report import commit, write_report

TRAIN_STEPS = {"kjv-lstm-tiny": 150, "kjv-lstm": 15}  # several seconds each on one core
MIN_EVAL_S = 2.0
EVAL_TOKENS = 12_000  # the slice a search validates on


def measure(model_name: str, threads: int) -> dict:
    """One round in this process: training steps/s (a trial's batch 32 x 35 tokens, validation
    excluded) and evaluation tokens/s over the search's validation slice."""
    torch.set_num_threads(threads)
    from autoshrink.api import load
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
    return {"model": model_name, "threads": threads, "load_before": load_before,
            "train_steps_per_s": steps / train_s,
            "eval_tokens_per_s": passes * min(EVAL_TOKENS, len(data.valid)) / eval_s}


def _spawn(model_name: str, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-m", "autoshrink.bench.threads", "--one", model_name, str(threads)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _cell(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


def report(rows: list[dict], argv: list[str]) -> str:
    lines = [
        "# Torch threads on a small machine",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {os.cpu_count()} cores, shared with other jobs), "
        f"torch {torch.__version__}, commit {commit()}, command "
        f"`{' '.join(['python -m autoshrink.bench.threads', *argv])}`.",
        "",
        "Median over the rounds (range in brackets); each round is a fresh process, thread counts alternate. "
        "Training: batch 32 x 35 tokens, as a trial fine-tunes; evaluation: the first 12,000 validation tokens, "
        "batch 10. Load: the 1-minute load average before the round.",
        "",
        "| model | threads | training steps/s | evaluation tokens/s | load before |",
        "|---|---|---|---|---|",
    ]
    for model_name in dict.fromkeys(r["model"] for r in rows):
        for threads in sorted({r["threads"] for r in rows if r["model"] == model_name}):
            mine = [r for r in rows if r["model"] == model_name and r["threads"] == threads]
            lines.append(f"| {model_name} | {threads} | {_cell([r['train_steps_per_s'] for r in mine], 2)} | "
                         f"{_cell([r['eval_tokens_per_s'] for r in mine], 0)} | "
                         f"{', '.join(format(r['load_before'], '.2f') for r in mine)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["kjv-lstm-tiny", "kjv-lstm"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="results/threads.md")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "THREADS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return 0
    rows = []
    for model_name in args.models:
        for round_ in range(args.rounds):
            order = args.threads if round_ % 2 == 0 else args.threads[::-1]
            for threads in order:
                rows.append(_spawn(model_name, threads))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    write_report(args.out, report(rows, argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
