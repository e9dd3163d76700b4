"""Commands about a search and its run folder: `search` (per-site choices to a Pareto front under
a budget), `profile` (show a run's per-site profile, or measure one without trials) and `front`
(show a run's Pareto front)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys

from autoshrink import api
from autoshrink.cli.flags import add_config_flags, config_from
from autoshrink.cli.formatting import HelpFormatter
from autoshrink.errors import UserError
from autoshrink.search.config import PROFILE_SETTINGS, SearchConfig


def search_parser(sub) -> None:
    p = sub.add_parser(
        "search",
        help="per-layer search to a Pareto front under a budget",
        description="Search per-site compression choices that meet the budget.",
        epilog="examples:\n  autoshrink search --budget 25x\n  autoshrink search --budget 1.5MB --trials 40\n"
        "  autoshrink search --budget 10x --model kjv-lstm-tiny --trials 4   # a quick look\n"
        "  autoshrink search --budget 4ms\n"
        "  autoshrink search --budget 25x --backend ray --workers 2          # Ray Tune, this machine\n"
        "  autoshrink search --budget 25x --backend ray --address auto --workers 8   # a Ray cluster",
        formatter_class=HelpFormatter,
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
    print("resume or extend (a larger --trials adds trials): autoshrink search " + shlex.join(result.config.flags()))
    return 0


def profile_parser(sub) -> None:
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
        formatter_class=HelpFormatter,
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
        print("search from this profile: autoshrink search " + shlex.join(run.config.flags()), file=sys.stderr)
    return 0


def front_parser(sub) -> None:
    p = sub.add_parser(
        "front",
        help="show the Pareto front of a run",
        description="The Pareto front (feasible completed trials) of a run folder, read from its "
        "study.db: it works while the search is still running.",
        epilog="examples:\n  autoshrink front results/runs/kjv-lstm-25x-20250101-120000\n"
        "  autoshrink front RUN_DIR --format csv > front.csv\n"
        "  autoshrink front RUN_DIR --format json --plot RUN_DIR/front.png",
        formatter_class=HelpFormatter,
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
