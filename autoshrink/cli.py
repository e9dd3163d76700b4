"""The `autoshrink` command: thin parsers that call the Python API and print.

Every command has --help with examples. Bad input (UserError) is one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Callable

from autoshrink.errors import UserError

Handler = Callable[[argparse.Namespace], int]


def _fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


class _Progress:
    """A tqdm bar fed by training records (step, loss, tokens/s); quiet when not a terminal."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, record: dict) -> None:
        from tqdm import tqdm
        if self.bar is None:
            self.bar = tqdm(total=record["steps"], desc=self.desc, unit="step", file=sys.stderr,
                            mininterval=2.0, disable=None)
        self.bar.update(record["step"] - self.bar.n)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- pretrain ---------------------------------------------------------------------------
def _pretrain_parser(sub) -> None:
    p = sub.add_parser("pretrain", help="train and cache a dense reference LM",
                       description="Pretrain a preset on a corpus (early-stopped on validation perplexity) and cache it "
                                   "in $AUTOSHRINK_CACHE or ~/.cache/autoshrink.",
                       epilog="examples:\n  autoshrink pretrain --model kjv-lstm-tiny\n"
                              "  autoshrink pretrain --model kjv-lstm --epochs 8 --out autoshrink/pretrained/kjv-lstm",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kjv-lstm", help="preset: kjv-lstm | kjv-lstm-tiny [kjv-lstm]")
    p.add_argument("--data", default="kjv", help="kjv, a folder with train/valid/test.txt, or a text file [kjv]")
    p.add_argument("--epochs", type=float, default=None, help="maximum epochs (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda [auto]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder to write (default: the cache)")
    p.set_defaults(handler=_pretrain_command)


def _pretrain_command(args) -> int:
    import json
    from pathlib import Path
    from autoshrink.api import pretrain
    from autoshrink.models.presets import get_preset
    get_preset(args.model)
    progress = _Progress(f"pretrain {args.model}")
    try:
        folder = pretrain(args.model, args.data, epochs=args.epochs, device=args.device, seed=args.seed,
                          out=Path(args.out) if args.out else None, command=args.command_line, on_log=progress,
                          on_eval=lambda step, ppl: print(f"step {step}: valid perplexity {ppl:.2f}", file=sys.stderr))
    finally:
        progress.close()
    info = json.loads((folder / "model.json").read_text())["pretrain"]
    print(f"{args.model}: valid ppl {info['val_ppl']:.2f}, test ppl {info['test_ppl']:.2f}, "
          f"{info['seconds']:.0f} s, {info['tokens_per_s']} tokens/s -> {folder}")
    return 0


# --- sites, methods ---------------------------------------------------------------------
def _sites_parser(sub) -> None:
    p = sub.add_parser("sites", help="list the compressible sites of a model",
                       description="Each site: name, role, shape (out x in; words x dim), dense bytes, tie partner.",
                       epilog="example:\n  autoshrink sites --model kjv-lstm", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kjv-lstm", help="preset name or model folder [kjv-lstm]")
    p.add_argument("--data", default="kjv", help="corpus the preset is pretrained on [kjv]")
    p.set_defaults(handler=_sites_command)


def _sites_command(args) -> int:
    from autoshrink.api import load, sites
    from autoshrink.plan import dense_bytes
    model = load(args.model, data=args.data)
    print(f"{'site':<14} {'role':<10} {'shape':>12} {'dense bytes':>12}  tied with")
    for s in sites(model):
        print(f"{s.name:<14} {s.role:<10} {f'{s.shape[0]}x{s.shape[1]}':>12} {s.dense_bytes:>12,}  {s.tied_with or '-'}")
    print(f"whole model: {dense_bytes(model):,} bytes fp32 ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def _methods_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the compression methods and their knobs",
                       epilog="example:\n  autoshrink methods", formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(handler=_methods_command)


def _methods_command(args) -> int:
    from autoshrink.methods import config_class, method_names
    for name in method_names():
        cls = config_class(name)
        knobs = ", ".join(f"{k}={v!r}" for k, v, _ in cls.knobs())
        print(f"{name:<12} [{', '.join(cls.roles)}]  {knobs}")
    return 0


# --- search (and the commands that land after it) ----------------------------------------
def _search_parser(sub) -> None:
    p = sub.add_parser("search", help="per-layer search to a Pareto front under a budget",
                       description="Search per-site compression choices that meet the budget.",
                       epilog="examples:\n  autoshrink search --budget 25x\n  autoshrink search --budget 1.5MB --trials 40\n"
                              "  autoshrink search --budget 4ms --model kjv-lstm-tiny",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", required=True, help="25x (whole-model ratio), 1.5MB / 800KB / 2MiB (bytes), or 4ms (latency)")
    p.add_argument("--model", default="kjv-lstm")
    p.add_argument("--data", default="kjv")
    p.add_argument("--space", default="search_spaces/default.yaml")
    p.add_argument("--trials", type=int, default=8, help="trials in all, counted across resumes [8]")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tuning steps per trial [80]")
    p.add_argument("--sampler", choices=("tpe", "nsga2", "random"), default="tpe", help="Optuna sampler [tpe]")
    p.add_argument("--distill", action="store_true", help="fine-tune trials on soft targets of the dense model too")
    p.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--address", default=None, help="Ray cluster address (auto or HOST:PORT)")
    p.add_argument("--run-dir", default=None, help="run folder [results/runs/<model>-<budget>-<time>]; "
                                                   "an existing one is resumed")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_search_command)


def _search_command(args) -> int:
    from autoshrink.search.controller import search
    from autoshrink.search.run_folder import COLUMNS
    result = search(args.budget, model=args.model, data=args.data, space=args.space, trials=args.trials,
                    timeout=args.timeout, finetune_steps=args.finetune_steps, backend=args.backend,
                    workers=args.workers, address=args.address, run_dir=args.run_dir, device=args.device,
                    seed=args.seed, sampler=args.sampler, distill=args.distill, command=args.command_line)
    front = result.front
    if front.empty:
        print(f"no feasible completed trial yet in {result.run_dir}; run the same command again to add trials")
        return 0
    print(f"Pareto front ({len(front)} trial(s)) of {result.run_dir}:")
    print(front[["number", "ratio", "stored_bytes", "latency_ms", "val_ppl", "methods"]].to_string(
        index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"resume or extend: autoshrink search --budget {args.budget} --run-dir {result.run_dir} --trials N")
    return 0


def _not_yet(name: str, issue: int, help_text: str, positional: str | None, flags: list[tuple]) -> Callable:
    def add(sub) -> None:
        p = sub.add_parser(name, help=help_text, description=f"{help_text}. (Lands with issue {issue}.)")
        if positional:
            p.add_argument(positional)
        for flag, kwargs in flags:
            p.add_argument(flag, **kwargs)
        p.set_defaults(handler=lambda args: _unavailable(name, issue))
    return add


def _unavailable(name: str, issue: int) -> int:
    raise UserError(f"`autoshrink {name}` is not available yet: it lands with issue {issue}")


PARSERS = [
    _pretrain_parser, _sites_parser, _methods_parser, _search_parser,
    _not_yet("front", 6, "show the Pareto front of a run", "run_dir",
             [("--format", dict(choices=("table", "csv", "json"), default="table")), ("--plot", dict(default=None))]),
    _not_yet("train", 6, "train one front configuration longer and export it", "run_dir",
             [("--trial", dict(default="best")), ("--steps", dict(type=int)), ("--epochs", dict(type=float)),
              ("--out", dict(default=None))]),
    _not_yet("eval", 6, "test perplexity, bytes, ratio and latency of an exported model", "dir",
             [("--data", dict(default=None)), ("--json", dict(action="store_true"))]),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoshrink", description="AutoML compression of language models.",
                                     epilog="start with:  autoshrink search --budget 25x")
    parser.add_argument("--version", action="version", version=f"autoshrink {__import__('autoshrink').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in PARSERS:
        add(sub)
    return parser


def _attach_values(argv: list[str]) -> list[str]:
    """`--budget -5MB` -> `--budget=-5MB`, so a negative budget reaches our check, not argparse's."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] == "--budget" and arg.startswith("-"):
            out[-1] = f"--budget={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = _attach_values(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    args.command_line = "autoshrink " + " ".join(shlex.quote(a) for a in argv)
    try:
        return args.handler(args)
    except UserError as e:
        print(f"autoshrink {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoshrink {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
