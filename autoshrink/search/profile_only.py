"""`autoshrink profile`: a search's cheap steps alone, no trial: calibration, the profile of every
site's options (profile.csv) and the knapsack's allocation for the budget (allocation.json), in a
run folder that a later `autoshrink search --run-dir SAME` resumes from (it reads the profile
instead of measuring it again).

run.json records only what the profile depends on (budget, model, data, space, seed, calibration
tokens), so the search that follows may still choose its trials, steps and sampler.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Callable, NamedTuple

from autoshrink.allocate import Allocation
from autoshrink.errors import UserError
from autoshrink.search import run_folder
from autoshrink.search.allocation import allocation
from autoshrink.search.config import SearchConfig
from autoshrink.search.controller import SearchContext
from autoshrink.search.prepare import calibration, load_inputs, run_identity, target
from autoshrink.search.trial import TrialSettings


class ProfileRun(NamedTuple):
    run_dir: Path
    allocation: Allocation
    config: SearchConfig  # every setting as it ran (a resumed folder's from its run.json)


def profile_only(
    config: SearchConfig, command: str | None = None, log: Callable[[str], None] | None = None
) -> ProfileRun:
    """Calibrate, profile every site's options alone (resuming profile.csv) and allocate the
    budget's bytes over them, untrained, in `config.run_dir`; no study, no trial."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    recorded = run_folder.recorded_settings(config.run_dir) or {}
    c = config.resolved(recorded, config.run_dir)
    named = target(c)
    if named.budget.kind == "latency":
        raise UserError(
            f"budget {named.budget.text} is a latency: the profile measures bytes and loss; give a byte budget "
            "(25x, 1.5MB)"
        )
    inputs = load_inputs(c, named, recorded, log)
    folder = named.folder
    folder.mkdir(parents=True, exist_ok=True)
    command = command or f"profile({c.budget!r})"
    if recorded:  # a run folder already: what it records stays, this command is one more invocation
        run_folder.add_invocation(folder, command)
    else:
        run_folder.write_run_json(
            folder,
            {
                "command": command,
                **run_identity(named, inputs),
                "seed": c.seed,
                "calibration_tokens": c.calibration_tokens,
                "dense_bytes": inputs.dense_bytes,
            },
        )
    log(f"profile {named.model_name} under {named.budget.text} ({inputs.max_bytes:,} bytes) -> {folder}")
    ctx = SearchContext(
        model=inputs.dense,
        data=inputs.data,
        sites=inputs.sites,
        space=inputs.space,
        budget=named.budget,
        dense_bytes=inputs.dense_bytes,
        settings=TrialSettings(seed=c.seed),  # the trials' validation slice, which the profile stays clear of
        freqs=inputs.freqs,
        max_bytes=inputs.max_bytes,
        model_file=inputs.model_file,
        stats=calibration(inputs, c.calibration_tokens, log),
    )
    result = allocation(ctx, folder, log, strict=True)  # a profile that allocates nothing says why
    if result is None:
        raise UserError(
            f"nothing to profile in {folder}: the model's sites are compressed in place, or space "
            f"{inputs.space.source} offers no option a profile can judge untrained"
        )
    return ProfileRun(folder, result, dataclasses.replace(c, run_dir=folder))
