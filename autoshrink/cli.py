"""The `autoshrink` command: thin parsers that build the API's configs, call the API and print.

Every command has --help with examples and its defaults. Bad input (UserError) is one line on
stderr and exit 2. The flags of `search` and `train` are generated from SearchConfig and
TrainConfig, so each default and its help is written once, in the config.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys

from autoshrink import api
from autoshrink.errors import UserError
from autoshrink.final.config import TrainConfig
from autoshrink.measure.timing import Spread
from autoshrink.models.progress import TrainingProgress
from autoshrink.search.config import PROFILE_SETTINGS, SearchConfig
from autoshrink.threads import set_default_threads


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every flag's help ends with its default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
        ):
            return text
        return text + " [%(default)s]"


def _type_of(field: dataclasses.Field):
    """int, float or str from a config field's annotation (a string under postponed annotations)."""
    kind = str(field.type).split("|")[0].strip()
    return {"int": int, "float": float}.get(kind, str)


def add_config_flags(
    parser: argparse.ArgumentParser, config_cls, skip: tuple[str, ...] = (), optional: tuple[str, ...] = ()
) -> None:
    """One flag per field of a config dataclass: --field-name, its help and default from the field;
    a boolean is a pair --field-name / --no-field-name (with no default when the field's default is
    None: not given, the config decides, e.g. from a resumed run). Fields in `optional` are not
    required even where the config requires them (the command decides what their absence means)."""
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        required = f.default is dataclasses.MISSING and f.name not in optional
        if f.default is None and str(f.type).startswith("bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue
        if isinstance(f.default, bool):
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=f.default,
                help=f"{help_text} [{'on' if f.default else 'off'}]",
            )
            continue
        parser.add_argument(
            flag,
            dest=f.name,
            type=_type_of(f),
            required=required,
            choices=f.metadata.get("choices"),
            default=None if f.default is dataclasses.MISSING else f.default,
            help=help_text,
        )


def config_from(args: argparse.Namespace, config_cls):
    """The config whose fields the parsed flags give."""
    return config_cls(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls) if hasattr(args, f.name)}
    )


def _spread(metrics: dict, key: str, unit: str, digits: int) -> str:
    """ "3.52 ms (median of 20, IQR 3.41-3.70)" from metrics that record a spread (measure/timing.py)."""
    if f"{key}_iqr" not in metrics:  # an older metrics.json: the median alone
        return f"{metrics[key]:,.{digits}f} {unit}"
    return Spread(metrics[key], *metrics[f"{key}_iqr"], metrics[f"{key}_repeats"]).describe(unit, digits)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def _progress_bar(desc: str) -> TrainingProgress:
    """A bar on a terminal, a line every 30 s otherwise (models/progress.py), kept when done."""
    return TrainingProgress(desc, leave=True)


# --- pretrain ---------------------------------------------------------------------------
def _pretrain_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train and cache a dense reference LM",
        description="Pretrain a preset on a corpus (early-stopped on validation perplexity) and cache it "
        "in $AUTOSHRINK_CACHE or ~/.cache/autoshrink.",
        epilog="examples:\n  autoshrink pretrain --model kjv-lstm-tiny\n"
        "  autoshrink pretrain --model kjv-lstm --epochs 8 --out autoshrink/pretrained/kjv-lstm",
        formatter_class=_Formatter,
    )
    p.add_argument("--model", default="kjv-lstm", help="preset: kjv-lstm | kjv-lstm-tiny")
    p.add_argument("--data", default="kjv", help="kjv, a folder with train/valid/test.txt, or a text file")
    p.add_argument("--epochs", type=float, default=None, help="maximum epochs (default: the preset's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--out", default=None, help="folder to write (default: the cache)")
    p.set_defaults(handler=_pretrain_command)


def _pretrain_command(args) -> int:
    import json
    from pathlib import Path

    progress = _progress_bar(f"pretrain {args.model}")
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


# --- sites, methods ---------------------------------------------------------------------
def _sites_parser(sub) -> None:
    p = sub.add_parser(
        "sites",
        help="list the compressible sites of a model",
        description="Each site: name, role, shape (out x in; words x dim), dense bytes, the method "
        "and stored bytes of a compressed one, tie partner. Works on dense models, "
        "presets and compressed exports (RUN_DIR/final).",
        epilog="examples:\n  autoshrink sites --model kjv-lstm\n"
        "  autoshrink sites --model results/runs/<run>/final   # an export: method and bytes per site\n"
        "  autoshrink sites --model path/to/hf-model   # a local Hugging Face causal LM folder",
        formatter_class=_Formatter,
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


def _methods_parser(sub) -> None:
    p = sub.add_parser(
        "methods",
        help="list the compression methods and their knobs",
        epilog="example:\n  autoshrink methods\n  autoshrink methods --knobs",
        formatter_class=_Formatter,
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


# --- search ------------------------------------------------------------------------------
def _search_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="per-layer search to a Pareto front under a budget",
        description="Search per-site compression choices that meet the budget.",
        epilog="examples:\n  autoshrink search --budget 25x\n  autoshrink search --budget 1.5MB --trials 40\n"
        "  autoshrink search --budget 10x --model kjv-lstm-tiny --trials 4   # a quick look\n"
        "  autoshrink search --budget 4ms\n"
        "  autoshrink search --budget 25x --backend ray --workers 2          # Ray Tune, this machine\n"
        "  autoshrink search --budget 25x --backend ray --address auto --workers 8   # a Ray cluster",
        formatter_class=_Formatter,
    )
    add_config_flags(p, SearchConfig)
    p.set_defaults(handler=_search_command)


def _search_command(args) -> int:
    result = api.search(config_from(args, SearchConfig), command=args.command_line)
    front = result.front
    if front.empty:
        print(f"no feasible completed trial yet in {result.run_dir}")
    else:
        print(f"Pareto front ({len(front)} trial(s)) of {result.run_dir}; val ppl: {api.VAL_SLICE}:")
        print(
            front[["number", "ratio", "stored_bytes", "latency_ms", "val_ppl", "methods"]].to_string(
                index=False, float_format=lambda v: f"{v:.2f}"
            )
        )
    print(
        "resume or extend (a larger --trials adds trials): autoshrink search "
        + " ".join(shlex.quote(a) for a in result.config.flags())
    )
    return 0


# --- profile -----------------------------------------------------------------------------
def _profile_parser(sub) -> None:
    p = sub.add_parser(
        "profile",
        help="each site's options alone, untrained: show a run's profile, or measure one (no trial)",
        description="With RUN_DIR alone: print the run's profile.csv as a table per site, options sorted by "
        "bytes: method, knobs, bytes, the site's ratio, loss increase and perplexity with that site alone "
        "compressed (untrained, on held-out validation tokens), seconds; * marks the site's bytes/loss "
        "Pareto front, > the allocation's choice. With --budget: run only a search's cheap steps "
        "(calibration, the profile, the knapsack's allocation for the budget) into the run folder, then "
        "print it; `autoshrink search --run-dir SAME` later resumes from that profile.",
        epilog="examples:\n  autoshrink profile results/runs/kjv-lstm-25x-20250101-120000\n"
        "  autoshrink profile --budget 25x --run-dir runs/kjv-25x       # measure, then: autoshrink search "
        "--budget 25x --run-dir runs/kjv-25x\n"
        "  autoshrink profile --budget 10x --model kjv-lstm-tiny --plot profile.png\n"
        "  autoshrink profile RUN_DIR --format csv > profile-table.csv",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "folder",
        nargs="?",
        metavar="RUN_DIR",
        default=None,
        help="a run folder (with --budget: the one to measure into)",
    )
    trial_only = [f.name for f in dataclasses.fields(SearchConfig) if f.name not in PROFILE_SETTINGS]
    add_config_flags(p, SearchConfig, skip=tuple(trial_only), optional=("budget",))
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    p.add_argument(
        "--plot", default=None, metavar="PATH", help="also draw the profile as curves to a PNG, a panel per site"
    )
    p.set_defaults(handler=_profile_command)


def _profile_command(args) -> int:
    if args.folder and args.run_dir and os.path.abspath(args.folder) != os.path.abspath(args.run_dir):
        raise UserError(f"RUN_DIR {args.folder} and --run-dir {args.run_dir} name two folders: give one")
    args.run_dir = args.folder or args.run_dir
    if args.budget is None:
        given = [
            name for name in PROFILE_SETTINGS if name not in ("run_dir", "device") and getattr(args, name) is not None
        ]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} is a setting of a measurement: add --budget")
        if args.run_dir is None:
            raise UserError("give a run folder to show its profile, or --budget (25x, 1.5MB) to measure one")
        run_dir = args.run_dir
    else:
        run = api.profile(config_from(args, SearchConfig), command=args.command_line)
        run_dir = run.run_dir
    print(api.profile_text(run_dir, args.format), end="")
    if args.plot:
        print(f"wrote {api.plot_profile(run_dir, args.plot)}", file=sys.stderr)
    if args.budget is not None:
        print(
            "search from this profile: autoshrink search " + " ".join(shlex.quote(a) for a in run.config.flags()),
            file=sys.stderr,
        )
    return 0


# --- front, train, eval -------------------------------------------------------------------
def _front_parser(sub) -> None:
    p = sub.add_parser(
        "front",
        help="show the Pareto front of a run",
        description="The Pareto front (feasible completed trials) of a run folder, read from its "
        "study.db: it works while the search is still running.",
        epilog="examples:\n  autoshrink front results/runs/kjv-lstm-25x-20250101-120000\n"
        "  autoshrink front RUN_DIR --format csv > front.csv\n"
        "  autoshrink front RUN_DIR --format json --plot RUN_DIR/front.png",
        formatter_class=_Formatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `autoshrink search`")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    p.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="also draw val ppl against stored bytes (or latency) to a PNG, the front highlighted; a run with a "
        "profile.csv also gets its profile's curves beside it (PATH-profile.png)",
    )
    p.set_defaults(handler=_front_command)


def _front_command(args) -> int:
    print(api.front_text(args.run_dir, args.format), end="")
    if args.plot:
        print(f"wrote {api.plot_front(args.run_dir, args.plot)}", file=sys.stderr)
        beside = api.plot_profile_beside(args.run_dir, args.plot)
        if beside is not None:
            print(f"wrote {beside} (the profile: each site's options alone, untrained)", file=sys.stderr)
    return 0


def _train_parser(sub) -> None:
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
        formatter_class=_Formatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of `autoshrink search`")
    add_config_flags(p, TrainConfig)
    p.set_defaults(handler=_train_command)


def _train_command(args) -> int:
    config = config_from(args, TrainConfig)
    progress = _progress_bar(f"train {config.trial}")
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
        f"{_fmt_bytes(m['stored_bytes'])} ({m['ratio']:.1f}x), latency {_spread(m, 'latency_ms', 'ms', 2)}, "
        f"{m['steps']} steps -> {final.out}"
    )
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="test perplexity, bytes, ratio and latency of an exported model",
        description="Evaluate a compressed export, a dense model folder or a preset: test perplexity "
        "(whole test split), stored bytes (checked against the file), ratio to the dense "
        "fp32 model, CPU latency (batch 1, 35 tokens, median) and tokens/s.",
        epilog="examples:\n  autoshrink eval results/runs/kjv-lstm-25x-20250101-120000/final\n"
        "  autoshrink eval kjv-lstm --json\n  autoshrink eval my-model/ --data corpus/",
        formatter_class=_Formatter,
    )
    p.add_argument("dir", metavar="DIR", help="an export folder, a dense model folder, or a preset name")
    p.add_argument("--data", default=None, help="corpus (default: the one the model's model.json names, or kjv)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu", help="device of the perplexity pass; latency is always CPU")
    p.set_defaults(handler=_eval_command)


def _eval_command(args) -> int:
    import json

    r = api.evaluate(args.dir, data=args.data, device=args.device)
    if args.json:
        print(json.dumps(r))
        return 0
    print(
        f"{r['model']}: test ppl {r['test_ppl']:.2f} ({r['test_tokens']:,} tokens of {r['data']}), "
        f"{r['stored_bytes']:,} stored bytes ({_fmt_bytes(r['stored_bytes'])}, {r['ratio']:.1f}x smaller than dense "
        f"fp32), latency {_spread(r, 'latency_ms', 'ms', 2)} (CPU, batch 1, 35 tokens), "
        f"{_spread(r, 'tokens_per_s', 'tokens/s', 0)} (batch 10)"
    )
    return 0


PARSERS = [
    _pretrain_parser,
    _sites_parser,
    _methods_parser,
    _search_parser,
    _profile_parser,
    _front_parser,
    _train_parser,
    _eval_parser,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoshrink",
        description="AutoML compression of language models.",
        epilog="start with:  autoshrink search --budget 25x",
    )
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
    set_default_threads()  # one thread on small machines (results/threads.md), unless OMP_NUM_THREADS says
    try:
        return args.handler(args)
    except UserError as e:
        print(f"autoshrink {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `autoshrink methods | head`: the reader left, nothing more to say
        sys.stderr = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print(f"autoshrink {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
