"""The run folder (docs/how-it-works.md): the one module that writes and reads it.

Written after every trial: run.json (what the search was asked: model, data, space, fidelity,
seed, versions), trials.csv, front.csv; study.db is the Optuna study (search/study.py opens it).
trials/<number>/model.safetensors: the fine-tuned weights of a trial on the front, which
`autoshrink train` starts from (`keep_weights`, `kept_weights`); a trial that leaves the front
loses them (`write`), so the disk holds at most one model per front trial.
Read: `read_run` (run.json), `read` (run.json + every trial + the front, from the study itself,
so a resumed or still running search and `autoshrink front` all see the same thing).
Before the trials (search/allocation.py): profile.csv (each site's options alone, written row by
row by allocate/profile.py) and allocation.json (`write_allocation`: the knapsack's plans, the
dense loss of the profile's slice and the sites, what `autoshrink profile` shows beside the profile).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import optuna
import pandas as pd
from safetensors.torch import save_model
from torch import nn

from autoshrink.errors import UserError, read_user_json
from autoshrink.provenance import source_commit
from autoshrink.search.pareto import pareto_mask
from autoshrink.search.study import REPAIRED, load_study, origin_of

if TYPE_CHECKING:
    from autoshrink.allocate import Allocation

TRIALS, WEIGHTS = "trials", "model.safetensors"  # RUN/trials/<number>/model.safetensors
PROFILE, ALLOCATION = "profile.csv", "allocation.json"
# origin: where the plan came from (search/study.origin_of): the allocation, a uniform control, the sampler
COLUMNS = [
    "number", "state", "stored_bytes", "ratio", "latency_ms", "val_ppl", "seconds", "steps", "methods", "origin", "plan",
]  # fmt: skip


def method_mix(plan: dict) -> str:
    """`encoder=groupreduce rnn.0.hh=kronecker ...`, compact for tables and progress lines."""
    return " ".join(f"{site}={cfg['method']}" for site, cfg in plan.items()) or "dense"


def trial_rows(study: optuna.Study) -> pd.DataFrame:
    """One row per trial; a draw that was repaired into a new trial is not one (the new one is)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if a.get(REPAIRED):
            continue
        plan = a.get("plan", {})
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "stored_bytes": a.get("stored_bytes"),
                "ratio": a.get("ratio"),
                "latency_ms": a.get("latency_ms"),
                "val_ppl": a.get("val_ppl"),
                "seconds": a.get("seconds"),
                "steps": a.get("steps"),
                "methods": method_mix(plan),
                "origin": origin_of(t),
                "plan": json.dumps(plan, sort_keys=True),
                "feasible": a.get("feasible", False),
                "note": a.get("note", ""),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS + ["feasible", "note"])


def front_rows(trials: pd.DataFrame, objective: str = "stored_bytes") -> pd.DataFrame:
    """Feasible COMPLETE trials no other such trial dominates in (objective, val_ppl)."""
    ppl = pd.to_numeric(trials["val_ppl"], errors="coerce")
    keep = (trials["state"] == "COMPLETE") & trials["feasible"].astype(bool) & np.isfinite(ppl.fillna(np.inf))
    done = trials[keep.to_numpy()].copy()
    if done.empty:
        return trials.iloc[0:0]
    mask = pareto_mask(np.column_stack([done[objective].astype(float), done["val_ppl"].astype(float)]))
    return done[mask].sort_values(objective)


def write(run_dir: Path, study: optuna.Study, objective: str = "stored_bytes") -> pd.DataFrame:
    """trials.csv and front.csv from the study; kept weights of trials off the front are deleted."""
    trials = trial_rows(study)
    trials[COLUMNS].to_csv(run_dir / "trials.csv", index=False)
    front = front_rows(trials, objective)
    front[COLUMNS].to_csv(run_dir / "front.csv", index=False)
    on_front = {str(n) for n in front["number"]}
    for folder in (run_dir / TRIALS).glob("*") if (run_dir / TRIALS).is_dir() else ():
        if folder.name not in on_front:
            shutil.rmtree(folder, ignore_errors=True)
    return front


def keep_weights(run_dir: Path, number: int, model: nn.Module) -> Path:
    """Save a trial's fine-tuned weights (its compressed model's state) for `autoshrink train`."""
    folder = run_dir / TRIALS / str(number)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    save_model(model, str(tmp))
    return tmp.replace(folder / WEIGHTS)


def kept_weights(run_dir: str | Path, number: int) -> Path | None:
    """The kept fine-tuned weights of trial `number`, or None (not on the front, or an older run)."""
    path = Path(run_dir) / TRIALS / str(number) / WEIGHTS
    return path if path.is_file() else None


def write_run_json(run_dir: Path, info: dict) -> None:
    """run.json: `info` of this invocation, with every invocation's command and the commit of the
    code each ran (`provenance.source_commit`; None outside a git checkout) appended to those before it."""
    path = run_dir / "run.json"
    before = read_run(run_dir) if path.exists() else {}
    kept = {"invocations": before.get("invocations", []), "commits": _commits(before)}
    _append_invocation(run_dir, {**info, **kept}, info["command"])


def add_invocation(run_dir: Path, command: str) -> None:
    """One more command that ran in an existing run folder; what run.json records stays."""
    _append_invocation(run_dir, read_run(run_dir), command)


def _commits(info: dict) -> list:
    """The commits recorded so far, one per invocation (None for those before commits were recorded)."""
    return info.get("commits", [None] * len(info.get("invocations", [])))


def _append_invocation(run_dir: Path, info: dict, command: str) -> None:
    invocations = info.get("invocations", []) + [command]
    info = {**info, "invocations": invocations, "commits": _commits(info) + [source_commit()]}
    (Path(run_dir) / "run.json").write_text(json.dumps(info, indent=1))


def write_allocation(
    run_dir: Path, result: "Allocation", sites: list, tokens: int, held_out_start: int = 0, profile_finetune: int = 0
) -> Path:
    """allocation.json: the allocation's plans (best first, then the ladder's and the hedges), the profile rows
    they were chosen from (their model, slice and build fingerprints, and the per-site fine-tune
    steps before each measurement), the dense model's loss on that slice (`tokens` validation
    tokens from token `held_out_start` of the valid split) and each site's role and shape."""
    first = result.table.iloc[0] if len(result.table) else None
    info = {
        "limit": result.limit,
        "tokens": tokens,
        "held_out_start": held_out_start,
        "profile_finetune": profile_finetune,
        "dense_loss": result.dense_loss,
        "profile": {k: str(first[k]) for k in ("model", "data", "build")} if first is not None else None,
        "sites": {
            s.name: {"role": s.role, "shape": list(s.shape), "dense_bytes": s.dense_bytes, "tied_with": s.tied_with}
            for s in sites
        },
        "best": result.best.to_dict(),
        "ladder": {f"{f:g}": (a.to_dict() if a is not None else None) for f, a in sorted(result.ladder.items())},
        "hedges": [a.to_dict() for a in result.hedges],
        "toward_uniform": result.toward_uniform.to_dict() if result.toward_uniform is not None else None,
        "zoomed": {site: [c.to_dict() for c in configs] for site, configs in result.zoomed.items()},
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }
    path = run_dir / ALLOCATION
    path.write_text(json.dumps(info, indent=1))
    return path


def read_allocation(run_dir: str | Path) -> dict | None:
    """allocation.json of a run folder, None where there is none (a run from before it was written)."""
    path = Path(run_dir) / ALLOCATION
    if not path.is_file():
        return None
    info = read_user_json(path, "allocation file")
    if not isinstance(info, dict) or "best" not in info:
        raise UserError(f"allocation file {path} is corrupt (no allocation in it): remove it")
    return info


def read_run(run_dir: str | Path) -> dict:
    """run.json of a run folder; a missing folder or file is a UserError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"no run folder {run_dir}")
    path = run_dir / "run.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no run.json: not an autoshrink run folder (autoshrink search --run-dir ...)")
    info = read_user_json(path, "run file")
    if not isinstance(info, dict):
        raise UserError(f"run file {path} is corrupt (not a JSON object)")
    return info


# run.json key of each setting a resume must keep (search/config.py RECORDED, and the budget)
_RECORDED_KEYS = {
    "budget": "budget",
    "model": "model",
    "data": "data_path",
    "space": "space",
    "finetune_steps": "finetune_steps",
    "distill": "distill",
    "sampler": "sampler",
    "seed": "seed",
    "calibration_tokens": "calibration_tokens",
    "space_digest": "space_digest",
}  # not a flag: what the space allowed (search/space.py)


def recorded_settings(run_dir: str | Path | None) -> dict | None:
    """The settings an existing run was searched with ({config field: value}, from run.json), for
    `SearchConfig.resolved`; None for a new run folder. Settings an older run.json lacks are left out."""
    if run_dir is None or not (Path(run_dir) / "run.json").exists():
        return None
    info = read_run(run_dir)
    return {field: info[key] for field, key in _RECORDED_KEYS.items() if info.get(key) is not None}


def objective_of(info: dict) -> str:
    return "latency_ms" if info.get("budget_kind") == "latency" else "stored_bytes"


class RunRecord(NamedTuple):
    run_dir: Path
    info: dict  # run.json
    trials: pd.DataFrame  # every trial of the study (run_folder.trial_rows)
    front: pd.DataFrame  # feasible COMPLETE trials on the Pareto front, by the objective
    objective: str  # stored_bytes, or latency_ms for a latency budget


def read(run_dir: str | Path) -> RunRecord:
    """run.json, every trial of the study, and the front: the whole record of a run."""
    run_dir = Path(run_dir)
    info = read_run(run_dir)
    trials = trial_rows(load_study(run_dir))
    objective = objective_of(info)
    front = front_rows(trials, objective).reset_index(drop=True)
    return RunRecord(run_dir, info, trials, front, objective)
