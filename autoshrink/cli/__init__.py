"""The `autoshrink` command: thin parsers that build the API's configs, call the API and print.

Every command has --help with examples and its defaults. Bad input (UserError) is one line on
stderr and exit 2. The flags of `search` and `train` are generated from SearchConfig and
TrainConfig (flags.py), so each default and its help is written once, in the config. The commands
live by what they act on: model_commands.py (pretrain, sites, methods), search_commands.py
(search, profile, front), final_commands.py (train, eval); formatting.py holds what they share.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from autoshrink.cli.final_commands import eval_parser, train_parser
from autoshrink.cli.model_commands import methods_parser, pretrain_parser, sites_parser
from autoshrink.cli.search_commands import front_parser, profile_parser, search_parser
from autoshrink.errors import UserError
from autoshrink.threads import set_default_threads

# The commands in the order --help lists them.
PARSERS = [
    pretrain_parser,
    sites_parser,
    methods_parser,
    search_parser,
    profile_parser,
    front_parser,
    train_parser,
    eval_parser,
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
    args.command_line = "autoshrink " + shlex.join(argv)
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
