"""Wall time of the search's profile measured serially and on Ray workers (`--backend ray`).

    python -m autoshrink.bench.ray_profile [--model kjv-lstm-tiny] [--budget 10x] [--workers 2] [--limit N]

The options are the ones a search of the default space profiles for the budget (search/allocation.py
`space_options`), on the same held-out slice, data-aware with the calibration statistics; `--limit`
keeps the first N of them, taken in turn from each site. The serial profile runs in this process on
one torch thread; the Ray profile runs `--workers` options at once, one thread each, on a local Ray
whose start is timed apart. Both start from no profile.csv; the rows are compared option by option.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

import torch

from autoshrink.allocate.pipeline import SLICE_TOKENS, fixed_bytes
from autoshrink.allocate.profile import profile
from autoshrink.bench.report import commit, write_report
from autoshrink.calibrate import calibrate
from autoshrink.data import load_lm_data
from autoshrink.models import discover_sites
from autoshrink.models.load import load
from autoshrink.plan import ModelFile, dense_bytes
from autoshrink.search.allocation import space_options
from autoshrink.search.budget import check_feasible, parse_budget
from autoshrink.search.ray_backend import start_ray
from autoshrink.search.ray_profile import RayOptionMap
from autoshrink.search.space import default_space, load_space
from autoshrink.search.trial import TrialSettings


def _first(options: dict, limit: int | None) -> dict:
    """The first `limit` options, one site after another in turn."""
    if limit is None:
        return options
    turns = itertools.chain.from_iterable(itertools.zip_longest(*[[(n, c) for c in v] for n, v in options.items()]))
    kept = [pair for pair in turns if pair is not None][:limit]
    return {name: [c for n, c in kept if n == name] for name in options if any(n == name for n, _ in kept)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="kjv-lstm-tiny")
    p.add_argument("--budget", default="10x")  # the tiny model has no option at 25x
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="profile only the first N options")
    p.add_argument("--out", default="results/ray_profile.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the serial profile on one thread, as each Ray worker
    dense = load(args.model, data="kjv").cpu().eval()
    data = load_lm_data("kjv", vocab=dense.vocab)
    sites, freqs = discover_sites(dense), data.vocab.freqs
    space, model_file = load_space(default_space(sites)), ModelFile.of(dense, sites)
    max_bytes = check_feasible(parse_budget(args.budget), space, sites, dense_bytes(dense), freqs, model_file)
    options = space_options(space, sites, max_bytes - fixed_bytes(sites, model_file), model_file, freqs)
    options = _first(options, args.limit)
    count = sum(map(len, options.values()))
    if not count:
        raise SystemExit(f"the space has no option to profile for {args.model} at {args.budget}: try a larger budget")
    stats = calibrate(dense, data.train, freqs=freqs)
    held_out = data.valid.reshape(-1)[TrialSettings().eval_tokens or 0 :][:SLICE_TOKENS]
    common = dict(freqs=freqs, stats=stats, progress=False)

    load_serial = os.getloadavg()[0]
    start = time.perf_counter()
    serial = profile(dense, held_out, options, **common)
    serial_s = time.perf_counter() - start

    load_ray = os.getloadavg()[0]
    start = time.perf_counter()
    started = start_ray(None, args.workers, 1)
    ray_start_s = time.perf_counter() - start
    try:
        arrivals: list[float] = []
        ray_map = RayOptionMap(args.workers, 1)

        def timed(measure, inputs, jobs):
            for row in ray_map(measure, inputs, jobs):
                arrivals.append(time.perf_counter())
                yield row

        start = time.perf_counter()
        parallel = profile(dense, held_out, options, map_options=timed, **common)
        ray_s = time.perf_counter() - start
        first_s = arrivals[0] - start
    finally:
        if started:
            import ray

            ray.shutdown()
    diff = (serial["loss_delta"].astype(float) - parallel["loss_delta"].astype(float)).abs().max()
    same = serial.drop(columns=["seconds", "loss_delta"]).equals(parallel.drop(columns=["seconds", "loss_delta"]))
    busy = parallel["seconds"].sum()

    command = f"python -m autoshrink.bench.ray_profile --model {args.model} --budget {args.budget} " + (
        f"--workers {args.workers}" + (f" --limit {args.limit}" if args.limit else "")
    )
    lines = [
        f"## Profile on Ray workers ({args.model}, budget {args.budget}, {count} options of {len(options)} sites)",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU ({platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}, "
        f"commit {commit()}, `{command}`. One torch thread per option. The cores are shared with other jobs "
        "(load average at the start of each run below): the figures are indicative.",
        "",
        "| profile | wall s | speed-up | first row after s | sum of option s | options measured at once "
        "(sum of option s / wall s) | load avg at start |",
        "|---|---|---|---|---|---|---|",
        f"| serial | {serial_s:.1f} | 1.00x | {serial['seconds'].iloc[0]:.1f} | {serial['seconds'].sum():.1f} | "
        f"{serial['seconds'].sum() / serial_s:.2f} | {load_serial:.2f} |",
        f"| ray, {args.workers} workers | {ray_s:.1f} | {serial_s / ray_s:.2f}x | {first_s:.1f} | {busy:.1f} | "
        f"{busy / ray_s:.2f} | {load_ray:.2f} |",
        f"| ray, {args.workers} workers, with starting Ray ({ray_start_s:.1f} s) | {ray_s + ray_start_s:.1f} | "
        f"{serial_s / (ray_s + ray_start_s):.2f}x | | | | |",
        "",
        f"Once the actors ran ({first_s:.1f} s), the other {count - 1} rows came in {ray_s - first_s:.1f} s: "
        f"{(count - 1) / (ray_s - first_s) / (count / serial_s):.2f}x the serial profile's options per second.",
        "",
        f"Rows: {'the same' if same else 'NOT the same'} options and bytes; largest loss difference {diff:.2e} "
        "nats per token. Ray's wall time includes shipping the inputs to the object store and starting "
        f"{args.workers} actors (each a process that imports torch and reads the inputs once): the first row "
        "comes after that; a search keeps its Ray for the trials. The sum of option seconds against the "
        "serial one shows how much slower each option ran beside the other workers on shared cores.",
        "",
    ]
    write_report(args.out, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
