"""Commands about models and methods: `pretrain` (train and cache a dense reference LM), `sites`
(a model's compressible sites) and `methods` (the compression methods and their knobs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from autoshrink import api
from autoshrink.cli.formatting import HelpFormatter, progress_bar


def pretrain_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train and cache a dense reference LM",
        description="Pretrain a preset on a corpus (early-stopped on validation perplexity) and cache it "
        "in $AUTOSHRINK_CACHE or ~/.cache/autoshrink.",
        epilog="examples:\n  autoshrink pretrain --model kjv-lstm-tiny\n"
        "  autoshrink pretrain --model kjv-lstm --epochs 8 --out autoshrink/pretrained/kjv-lstm",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="kjv-lstm", help="preset: kjv-lstm | kjv-lstm-tiny")
    p.add_argument("--data", default="kjv", help="kjv, a folder with train/valid/test.txt, or a text file")
    p.add_argument("--epochs", type=float, default=None, help="maximum epochs (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--out", default=None, help="folder to write (default: the cache)")
    p.set_defaults(handler=_pretrain_command)


def _pretrain_command(args) -> int:
    progress = progress_bar(f"pretrain {args.model}")
    try:
        folder = api.pretrain(
            args.model,
            args.data,
            epochs=args.epochs,
            device=args.device,
            seed=args.seed,
            out=Path(args.out) if args.out else None,
            command=args.command_line,
            on_log=progress,
            on_eval=lambda step, ppl: print(f"step {step}: valid perplexity {ppl:.2f}", file=sys.stderr),
        )
    finally:
        progress.close()
    info = json.loads((folder / "model.json").read_text())["pretrain"]
    print(
        f"{args.model}: valid ppl {info['val_ppl']:.2f}, test ppl {info['test_ppl']:.2f}, "
        f"{info['seconds']:.0f} s, {info['tokens_per_s']} tokens/s -> {folder}"
    )
    return 0


def sites_parser(sub) -> None:
    p = sub.add_parser(
        "sites",
        help="list the compressible sites of a model",
        description="Each site: name, role, shape (out x in; words x dim), dense bytes, the method "
        "and stored bytes of a compressed one, tie partner. Works on dense models, "
        "presets and compressed exports (RUN_DIR/final).",
        epilog="examples:\n  autoshrink sites --model kjv-lstm\n"
        "  autoshrink sites --model results/runs/<run>/final   # an export: method and bytes per site\n"
        "  autoshrink sites --model path/to/hf-model   # a local Hugging Face causal LM folder",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--model", default="kjv-lstm", help="preset name, model folder or Hugging Face folder")
    p.add_argument("--data", default="kjv", help="corpus the preset is pretrained on")
    p.set_defaults(handler=_sites_command)


def _sites_command(args) -> int:
    model = api.load(args.model, data=args.data)
    found = api.sites(model)
    w = max([14] + [len(s.name) for s in found])
    print(
        f"{'site':<{w}} {'role':<10} {'shape':>12} {'dense bytes':>12}  {'method':<12} {'stored bytes':>12}  tied with"
    )
    for s in found:
        stored = f"{s.stored_bytes:>12,}" if s.stored_bytes is not None else f"{'-':>12}"
        print(
            f"{s.name:<{w}} {s.role:<10} {f'{s.shape[0]}x{s.shape[1]}':>12} {s.dense_bytes:>12,}  "
            f"{s.method or 'dense':<12} {stored}  {s.tied_with or '-'}"
        )
    if any(s.method for s in found):
        print(f"whole model: {api.stored_bytes(model):,} stored bytes")
    else:
        print(
            f"whole model: {api.dense_bytes(model):,} bytes fp32 ({sum(p.numel() for p in model.parameters()):,} "
            "parameters)"
        )
    return 0


def methods_parser(sub) -> None:
    p = sub.add_parser(
        "methods",
        help="list the compression methods and their knobs",
        epilog="example:\n  autoshrink methods\n  autoshrink methods --knobs",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--knobs", dest="help_knobs", action="store_true", help="also explain every knob, one a line")
    p.set_defaults(handler=_methods_command)


def _methods_command(args) -> int:
    for cls in api.methods():
        name = cls.method
        knobs = ", ".join(f"{k}={v!r}" for k, v, _ in cls.knobs())
        print(f"{name:<12} [{', '.join(cls.roles)}]  {knobs}")
        if args.help_knobs:
            for knob, default, text in cls.knobs():
                print(f"    {knob:<11} {text} (default {default!r})")
    return 0
