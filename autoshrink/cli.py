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
                       epilog="examples:\n  autoshrink sites --model kjv-lstm\n"
                              "  autoshrink sites --model path/to/hf-model   # a local Hugging Face causal LM folder",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kjv-lstm", help="preset name, model folder or Hugging Face folder [kjv-lstm]")
    p.add_argument("--data", default="kjv", help="corpus the preset is pretrained on [kjv]")
    p.set_defaults(handler=_sites_command)


def _sites_command(args) -> int:
    from autoshrink.api import load, sites
    from autoshrink.plan import dense_bytes
    model = load(args.model, data=args.data)
    found = sites(model)
    w = max([14] + [len(s.name) for s in found])
    print(f"{'site':<{w}} {'role':<10} {'shape':>12} {'dense bytes':>12}  tied with")
    for s in found:
        print(f"{s.name:<{w}} {s.role:<10} {f'{s.shape[0]}x{s.shape[1]}':>12} {s.dense_bytes:>12,}  {s.tied_with or '-'}")
    print(f"whole model: {dense_bytes(model):,} bytes fp32 ({sum(p.numel() for p in model.parameters()):,} parameters)")
    return 0


def _methods_parser(sub) -> None:
    p = sub.add_parser("methods", help="list the compression methods and their knobs",
                       epilog="example:\n  autoshrink methods\n  autoshrink methods --knobs",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--knobs", dest="help_knobs", action="store_true", help="also explain every knob, one a line")
    p.set_defaults(handler=_methods_command)


def _methods_command(args) -> int:
    from autoshrink.methods import config_class, method_names
    for name in method_names():
        cls = config_class(name)
        knobs = ", ".join(f"{k}={v!r}" for k, v, _ in cls.knobs())
        print(f"{name:<12} [{', '.join(cls.roles)}]  {knobs}")
        if args.help_knobs:
            for knob, default, text in cls.knobs():
                print(f"    {knob:<11} {text} (default {default!r})")
    return 0


# --- search ------------------------------------------------------------------------------
def _search_parser(sub) -> None:
    p = sub.add_parser("search", help="per-layer search to a Pareto front under a budget",
                       description="Search per-site compression choices that meet the budget.",
                       epilog="examples:\n  autoshrink search --budget 25x\n  autoshrink search --budget 1.5MB --trials 40\n"
                              "  autoshrink search --budget 10x --model kjv-lstm-tiny --trials 4   # a quick look\n"
                              "  autoshrink search --budget 4ms\n"
                              "  autoshrink search --budget 25x --backend ray --workers 2          # Ray Tune, this machine\n"
                              "  autoshrink search --budget 25x --backend ray --address auto --workers 8   # a Ray cluster",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", required=True, help="25x (whole-model ratio), 1.5MB / 800KB / 2MiB (bytes), or 4ms (latency)")
    p.add_argument("--model", default="kjv-lstm", help="preset, model folder, or saved model [kjv-lstm]")
    p.add_argument("--data", default="kjv", help="kjv, a folder with train/valid/test.txt, or a text file [kjv]")
    p.add_argument("--space", default=None, help="search space YAML [search_spaces/default.yaml; "
                                                 "search_spaces/transformer.yaml for transformer models]")
    p.add_argument("--trials", type=int, default=8, help="trials in all, counted across resumes [8]")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tuning steps per trial [80]")
    p.add_argument("--sampler", choices=("tpe", "nsga2", "random"), default="nsga2",
                   help="Optuna sampler [nsga2: the best hypervolume in results/search.md]")
    p.add_argument("--distill", action="store_true", help="fine-tune trials on soft targets of the dense model too")
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false",
                   help="do not start from single-method plans (by default a new search's first trials put low-rank, "
                        "pruning or quantisation on every site, fitted to the budget)")
    p.add_argument("--backend", choices=("optuna", "ray"), default="optuna", help="optuna (one process) | ray (parallel trials through Ray Tune, ASHA early stopping) [optuna]")
    p.add_argument("--workers", type=int, default=1, help="trials at once (Ray backend) [1]")
    p.add_argument("--cpus-per-trial", type=int, default=1,
                   help="CPU threads per trial (Ray backend; GPUs, when the cluster has them, are shared evenly) [1]")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (auto, or HEAD_HOST:6379) instead of starting Ray locally (Ray backend)")
    p.add_argument("--run-dir", default=None, help="run folder [results/runs/<model>-<budget>-<time>]; "
                                                   "an existing one is resumed")
    p.add_argument("--device", default="auto", help="auto (CUDA with mixed precision when present) | cpu | cuda [auto]")
    p.add_argument("--seed", type=int, default=0, help="sampler and fine-tuning seed [0]")
    p.set_defaults(handler=_search_command)


def _search_command(args) -> int:
    from autoshrink.search.controller import search
    from autoshrink.search.run_folder import COLUMNS
    result = search(args.budget, model=args.model, data=args.data, space=args.space, trials=args.trials,
                    timeout=args.timeout, finetune_steps=args.finetune_steps, backend=args.backend,
                    workers=args.workers, address=args.address, run_dir=args.run_dir, device=args.device,
                    seed=args.seed, sampler=args.sampler, distill=args.distill, warm_start=args.warm_start,
                    cpus_per_trial=args.cpus_per_trial,
                    command=args.command_line)
    front = result.front
    if front.empty:
        print(f"no feasible completed trial yet in {result.run_dir}; run the same command again to add trials")
        return 0
    print(f"Pareto front ({len(front)} trial(s)) of {result.run_dir}:")
    print(front[["number", "ratio", "stored_bytes", "latency_ms", "val_ppl", "methods"]].to_string(
        index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"resume or extend: autoshrink search --budget {args.budget} --run-dir {result.run_dir} --trials N")
    return 0


# --- front, train, eval -------------------------------------------------------------------
def _front_parser(sub) -> None:
    p = sub.add_parser("front", help="show the Pareto front of a run",
                       description="The Pareto front (feasible completed trials) of a run folder, read from its "
                                   "study.db: it works while the search is still running.",
                       epilog="examples:\n  autoshrink front results/runs/kjv-lstm-25x-20250101-120000\n"
                              "  autoshrink front RUN_DIR --format csv > front.csv\n"
                              "  autoshrink front RUN_DIR --format json --plot RUN_DIR/front.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `autoshrink search`")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format [table]")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="also draw val ppl against stored bytes (or latency) to a PNG, the front highlighted")
    p.set_defaults(handler=_front_command)


def _front_command(args) -> int:
    from autoshrink.front import draw, plot_data, read_front, render
    front = read_front(args.run_dir)
    print(render(front, args.format), end="")
    if args.plot:
        print(f"wrote {draw(plot_data(front), args.plot)}", file=sys.stderr)
    return 0


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one front configuration longer and export it",
                       description="Final training of one plan of a run: compress the dense model with it, train "
                                   "longer (the methods' schedules run over the whole training), keep the best "
                                   "validated state, and export it (model.safetensors, plan.json, model.json, "
                                   "metrics.json). Every validation writes OUT/checkpoint; running the same command "
                                   "again continues from it (weights and schedules; the optimizer restarts).",
                       epilog="examples:\n  autoshrink train results/runs/kjv-lstm-25x-20250101-120000\n"
                              "  autoshrink train RUN_DIR --trial 7 --steps 3000 --distill\n"
                              "  autoshrink train RUN_DIR --trial smallest:150 --epochs 2 --out final-150",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `autoshrink search`")
    p.add_argument("--trial", default="best", help="best (lowest val ppl on the front), a trial number, or "
                                                   "smallest:PPL (fewest bytes on the front with val ppl <= PPL) [best]")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, default=None, help="training steps in all, counted across resumes [1000]")
    length.add_argument("--epochs", type=float, default=None, help="training length in epochs of the train split")
    p.add_argument("--out", default=None, help="export folder [RUN_DIR/final]")
    p.add_argument("--data", default=None, help="the corpus of the search (default: the one run.json names)")
    p.add_argument("--model", default=None, help="the dense model of the search (default: the one run.json names)")
    p.add_argument("--distill", action="store_true", help="train on soft targets of the dense model too")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda [auto]")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_train_command)


def _train_command(args) -> int:
    from autoshrink.train import train_trial
    progress = _Progress(f"train {args.trial}")
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        final = train_trial(args.run_dir, trial=args.trial, steps=args.steps, epochs=args.epochs, out=args.out,
                            device=args.device, distill=args.distill, data=args.data, model=args.model, seed=args.seed,
                            on_log=progress, log=log,
                            on_eval=lambda step, ppl: log(f"step {step}: valid perplexity {ppl:.2f}"))
    finally:
        progress.close()
    m = final.metrics
    print(f"trial {m['trial']}: val ppl {m['val_ppl']:.2f}, test ppl {m['test_ppl']:.2f}, "
          f"{_fmt_bytes(m['stored_bytes'])} ({m['ratio']:.1f}x), {m['latency_ms']:.2f} ms, "
          f"{m['steps']} steps -> {final.out}")
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="test perplexity, bytes, ratio and latency of an exported model",
                       description="Evaluate a compressed export, a dense model folder or a preset: test perplexity "
                                   "(whole test split), stored bytes (checked against the file), ratio to the dense "
                                   "fp32 model, CPU latency (batch 1, 35 tokens, median) and tokens/s.",
                       epilog="examples:\n  autoshrink eval results/runs/kjv-lstm-25x-20250101-120000/final\n"
                              "  autoshrink eval kjv-lstm --json\n  autoshrink eval my-model/ --data corpus/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="an export folder, a dense model folder, or a preset name")
    p.add_argument("--data", default=None, help="corpus (default: the one the model's model.json names, or kjv)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="device of the perplexity pass; latency is always CPU [cpu]")
    p.set_defaults(handler=_eval_command)


def _eval_command(args) -> int:
    import json
    from autoshrink.evaluate import evaluate_dir
    r = evaluate_dir(args.dir, data=args.data, device=args.device)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{r['model']}: test ppl {r['test_ppl']:.2f} ({r['test_tokens']:,} tokens of {r['data']}), "
          f"{r['stored_bytes']:,} stored bytes ({_fmt_bytes(r['stored_bytes'])}, {r['ratio']:.1f}x smaller than dense "
          f"fp32), latency {r['latency_ms']:.2f} ms (CPU, batch 1, 35 tokens), {r['tokens_per_s']:,.0f} tokens/s")
    return 0


PARSERS = [_pretrain_parser, _sites_parser, _methods_parser, _search_parser, _front_parser, _train_parser,
           _eval_parser]


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
