"""The run folder (docs/how-it-works.md), kept current after every trial: run.json, trials.csv, front.csv.

Rows come from the Optuna study itself (the record of a search), so a resumed or still running
search, and `autoshrink front`, all read the same thing.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from autoshrink.pareto import pareto_mask

COLUMNS = ["number", "state", "stored_bytes", "ratio", "latency_ms", "val_ppl", "seconds", "steps", "methods", "plan"]


def method_mix(plan: dict) -> str:
    """`encoder=groupreduce rnn.0.hh=kronecker ...`, compact for tables and progress lines."""
    return " ".join(f"{site}={cfg['method']}" for site, cfg in plan.items()) or "dense"


def trial_rows(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        plan = a.get("plan", {})
        rows.append({"number": t.number, "state": t.state.name, "stored_bytes": a.get("stored_bytes"),
                     "ratio": a.get("ratio"), "latency_ms": a.get("latency_ms"), "val_ppl": a.get("val_ppl"),
                     "seconds": a.get("seconds"), "steps": a.get("steps"), "methods": method_mix(plan),
                     "plan": json.dumps(plan, sort_keys=True), "feasible": a.get("feasible", False),
                     "note": a.get("note", "")})
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


def best_trial(front: pd.DataFrame) -> pd.Series | None:
    return None if front.empty else front.sort_values("val_ppl").iloc[0]


def write(run_dir: Path, study: optuna.Study, objective: str = "stored_bytes") -> pd.DataFrame:
    trials = trial_rows(study)
    trials[COLUMNS].to_csv(run_dir / "trials.csv", index=False)
    front = front_rows(trials, objective)
    front[COLUMNS].to_csv(run_dir / "front.csv", index=False)
    return front


def write_run_json(run_dir: Path, info: dict) -> None:
    path = run_dir / "run.json"
    runs = json.loads(path.read_text()).get("invocations", []) if path.exists() else []
    info = {**info, "invocations": runs + [info["command"]]}
    path.write_text(json.dumps(info, indent=1))
