"""Commands about the final model: `train` (train one plan of a run longer and export it) and
`eval` (test perplexity, bytes, ratio and latency of an export, a model folder or a preset)."""

from __future__ import annotations

import json
import sys

from autoshrink import api
from autoshrink.cli.flags import add_config_flags, config_from
from autoshrink.cli.formatting import HelpFormatter, fmt_bytes, progress_bar, spread
from autoshrink.final.config import TrainConfig


def train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train one front configuration longer and export it",
        description="Final training of one plan of a run: compress the dense model with it, train "
        "longer (the methods' schedules run over the whole training), keep the best "
        "validated state, and export it (model.safetensors, plan.json, model.json, "
        "metrics.json). Every validation writes OUT/checkpoint; running the same command "
        "again continues from it (weights and schedules; the optimizer restarts).",
        epilog="examples:\n  autoshrink train results/runs/kjv-lstm-25x-20250101-120000\n"
        "  autoshrink train RUN_DIR --trial 7 --steps 3000 --distill\n"
        "  autoshrink train RUN_DIR --trial smallest:150 --epochs 2 --out final-150",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `autoshrink search`")
    add_config_flags(p, TrainConfig)
    p.set_defaults(handler=_train_command)


def _train_command(args) -> int:
    config = config_from(args, TrainConfig)
    progress = progress_bar(f"train {config.trial}")
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        final = api.train(
            args.run_dir,
            config,
            on_log=progress,
            log=log,
            on_eval=lambda step, ppl: log(f"step {step}: val ppl {ppl:.2f} (whole valid split)"),
        )
    finally:
        progress.close()
    m = final.metrics
    print(
        f"trial {m['trial']}: val ppl {m['val_ppl']:.2f} (whole valid split), test ppl {m['test_ppl']:.2f}, "
        f"{fmt_bytes(m['stored_bytes'])} ({m['ratio']:.1f}x), latency {spread(m, 'latency_ms', 'ms', 2)}, "
        f"{m['steps']} steps -> {final.out}"
    )
    return 0


def eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="test perplexity, bytes, ratio and latency of an exported model",
        description="Evaluate a compressed export, a dense model folder or a preset: test perplexity "
        "(whole test split), stored bytes (checked against the file), ratio to the dense "
        "fp32 model, CPU latency (batch 1, 35 tokens, median) and tokens/s.",
        epilog="examples:\n  autoshrink eval results/runs/kjv-lstm-25x-20250101-120000/final\n"
        "  autoshrink eval kjv-lstm --json\n  autoshrink eval my-model/ --data corpus/",
        formatter_class=HelpFormatter,
    )
    p.add_argument("dir", metavar="DIR", help="an export folder, a dense model folder, or a preset name")
    p.add_argument("--data", default=None, help="corpus (default: the one the model's model.json names, or kjv)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="device of the perplexity pass; latency is always CPU")
    p.set_defaults(handler=_eval_command)


def _eval_command(args) -> int:
    r = api.evaluate(args.dir, data=args.data, device=args.device)
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{r['model']}: test ppl {r['test_ppl']:.2f} ({r['test_tokens']:,} tokens of {r['data']}), "
        f"{r['stored_bytes']:,} stored bytes ({fmt_bytes(r['stored_bytes'])}, {r['ratio']:.1f}x smaller than dense "
        f"fp32), latency {spread(r, 'latency_ms', 'ms', 2)} (CPU, batch 1, 35 tokens), "
        f"{spread(r, 'tokens_per_s', 'tokens/s', 0)} (batch 10)"
    )
    return 0
