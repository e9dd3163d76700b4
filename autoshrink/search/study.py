"""The Optuna study of a run (study.db) and the bookkeeping both backends share.

One study per run folder: multi-objective (val perplexity; bytes or latency), SQLite, heartbeats
so a crashed trial is failed and retried (RetryHeartbeatStaleTrialCallback), trials counted across
resumes (`counted_trials`, `TrialCap`). A trial's plan is sampled and repaired here
(`prepare_plan`), and its outcome recorded here (`record_result`, `record_stopped`), whether the
Optuna backend or the Ray backend ran it. Optuna's pruners refuse multi-objective studies
(optuna#3450), so successive halving is our own rule (`HalvingRule`).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from autoshrink.errors import UserError
from autoshrink.plan import plan_stored_bytes, plan_to_json
from autoshrink.search import owner as owners
from autoshrink.search.profile_sampler import ProfileGuidedSampler
from autoshrink.search.space import sample_plan
from autoshrink.search.trial import TrialResult

STUDY_NAME = "autoshrink"
# A crashed trial is noticed two heartbeats after its last one, when the search resumes.
HEARTBEAT_S = int(os.environ.get("AUTOSHRINK_HEARTBEAT_S", "15"))
SAMPLERS = ("tpe", "nsga2", "random", "profile", "gp")
OWNER = "autoshrink:owner"  # system attr: the search that runs the trial (search/owner.py)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # The default: the highest hypervolume after 24 trials in the sampler study (results/search.md).
        # multivariate + group: the conditional per-site knobs are modelled jointly per method.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=6)
    if name == "nsga2":
        # With its population of 8 it draws random search's plans for its first 8+ trials (results/search.md).
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":  # Gaussian-process BO (log EHVI); knobs outside the space all trials share are drawn at random
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=6, warn_independent_sampling=False)
    if name == "profile":  # knapsack plans over learned corrections of the profile (search/profile_sampler.py)
        return ProfileGuidedSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}: use {', '.join(SAMPLERS)}")


def open_study(run_dir: Path, sampler: str, seed: int) -> optuna.Study:
    # Heartbeats, grouped TPE and fail_stale_trials are marked experimental by Optuna; we rely
    # on them knowingly, and the progress lines are our own: keep the user's terminal clean.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from sqlalchemy.exc import SQLAlchemyError

    db = run_dir / "study.db"
    try:
        storage = RDBStorage(
            f"sqlite:///{db}",
            heartbeat_interval=HEARTBEAT_S,
            grace_period=2 * HEARTBEAT_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=storage,
            directions=["minimize", "minimize"],
            sampler=make_sampler(sampler, seed),
            load_if_exists=True,
        )
        done = len(study.get_trials(deepcopy=False))
    except (SQLAlchemyError, ValueError) as e:  # ValueError: an Optuna study of other directions
        raise _unreadable(db, e, "move it away, or use a new --run-dir") from None
    if done:  # a resumed search: a sampler seeded as before would draw its first plans again
        study.sampler = make_sampler(sampler, seed + done)
    return study


class HalvingRule:
    """Successive halving over fine-tuning steps, asynchronously (ASHA, Li et al. 2018), for two
    objectives: at a rung (search/trial.py `rungs`) a trial goes on only if its validation
    perplexity there is among the best 1/`halving` of the validations every trial recorded at that
    same step, among trials of no larger size (a smaller plan may be worse and still reach the
    front). With fewer than `halving` such entries it must be the best. So many plans train briefly
    and the best train longer; the front holds only trials that trained every step."""

    def __init__(self, study: optuna.Study, halving: int = 3):
        self.study, self.halving = study, halving

    def __call__(self, nbytes: int) -> Callable[[int, float], str | None]:
        if self.halving <= 1:
            return lambda step, val: None
        peers = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.user_attrs.get("curve")
            and t.user_attrs.get("feasible", True)
            and t.user_attrs.get("stored_bytes", math.inf) <= nbytes
        ]

        def should_stop(step: int, val: float) -> str | None:
            others = [t.user_attrs["curve"][str(step)] for t in peers if str(step) in t.user_attrs["curve"]]
            ranked = sorted([val, *others])
            keep = max(1, len(ranked) // self.halving)
            if val <= ranked[keep - 1]:
                return None
            return (
                f"at step {step} val ppl {val:.2f} is not among the best {keep} of {len(ranked)} plans of "
                f"<= {nbytes:,} bytes there (successive halving by {self.halving}: <= {ranked[keep - 1]:.2f})"
            )

        return should_stop


def claim(trial: optuna.Trial, owner: dict) -> None:
    """Record which search runs the trial (search/owner.py), so a resume knows when it is gone."""
    trial.study._storage.set_trial_system_attr(trial._trial_id, OWNER, owner)


def interrupt(study: optuna.Study, number: int, note: str) -> bool:
    """FAIL a RUNNING trial and queue its parameters again (the retry Optuna's heartbeat makes),
    so `counted_trials` counts the retry, not the interrupted try. True when a retry was queued
    (a plan is retried once)."""
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    storage.set_trial_user_attr(trial_id, "note", note)
    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    retry = storage.get_heartbeat_stale_trial_callback()
    if retry is None:
        return False
    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    retry(study, storage.get_trial(trial_id))
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) > waiting


def fail_orphans(study: optuna.Study) -> list[str]:
    """Fail the trials a dead search left RUNNING and queue their retries, which run first; one
    line for the log per trial. The owner of each is known (search/owner.py): no need to wait for
    the heartbeat's grace period. Trials whose owner cannot be checked (another host) are left to
    the heartbeat (`fail_stale_trials`), as before. Both backends start with this."""
    lines = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.system_attrs.get(OWNER)
        if owners.gone(owner):
            retried = interrupt(study, t.number, f"interrupted: {owners.describe(owner)} ended while it ran")
            lines.append(
                f"trial #{t.number} was left RUNNING by {owners.describe(owner)}, which has ended: "
                f"marked FAIL" + (", its plan is retried now" if retried else " (already retried once)")
            )
    fail_stale_trials(study)  # an owner this host cannot check: after the heartbeat's grace period
    return lines


def prepare_plan(trial: optuna.Trial, ctx) -> tuple[dict, int] | None:
    """Sample the trial's plan and check it against the budget, recording plan, bytes and ratio.
    None when it must not be trained: a plan over the budget is repaired inside the space, and the
    repaired plan is queued as a trial of its own (so the study records what was trained, under the
    parameters that draw it, and the sampler learns from that) while this one is noted
    "repaired into" and not counted; a plan no repair fits is noted infeasible. Both backends use this."""
    claim(trial, ctx.owner)
    plan = sample_plan(trial, ctx.space, ctx.sites)
    fixed = ctx.repair(plan)
    if fixed is None:
        trial.set_user_attr("note", "infeasible: no repair fits the budget (not trained)")
        trial.set_user_attr("plan", plan_to_json(plan))
        return None
    if fixed != plan:
        trial.set_user_attr("plan", plan_to_json(plan))
        trial.set_user_attr(REPAIRED, True)
        trial.set_user_attr("note", "over the budget: its repair inside the space is queued as a new trial")
        trial.study.enqueue_trial(
            ctx.space.params_of(fixed, ctx.sites),
            user_attrs={"note": f"repair of trial {trial.number}", **_inherited(trial)},
        )
        return None
    nbytes = plan_stored_bytes(ctx.sites, fixed, ctx.freqs, ctx.model_file)
    trial.set_user_attr("plan", plan_to_json(fixed))
    trial.set_user_attr("stored_bytes", nbytes)
    trial.set_user_attr("ratio", ctx.dense_bytes / nbytes)
    return fixed, nbytes


REPAIRED = "repaired_into_new_trial"  # a sampled plan over the budget: not trained, not counted


def origin_of(trial: optuna.trial.FrozenTrial) -> str:
    """Where a trial's plan came from: the allocation ("allocation (...)", "allocation hedge (...)",
    "knapsack at ..."), a uniform control ("uniform <method>"), or the sampler ("sampled")."""
    return trial.user_attrs.get("allocated") or trial.user_attrs.get("warm_start") or "sampled"


def _inherited(trial: optuna.Trial) -> dict:
    """What a repaired trial keeps of the one it repairs (its origin: warm start, allocation)."""
    return {k: v for k, v in trial.user_attrs.items() if k in ("warm_start", "allocated")}


def record_stopped(
    trial: optuna.Trial, step: int, val_ppl: float | None, seconds: float, note: str, curve: dict | None = None
) -> None:
    """A trial stopped before its last step: PRUNED, with the fidelity it reached and its validations
    so far (later trials are compared with them at equal steps), never on the front."""
    if curve is not None:
        trial.set_user_attr("curve", {str(k): v for k, v in curve.items()})
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("steps", step)
    trial.set_user_attr("val_ppl", val_ppl)
    trial.set_user_attr("note", note)


def record_result(trial: optuna.Trial, ctx, result: TrialResult, nbytes: int) -> tuple[float, float]:
    """A trial that trained all its steps: metrics as user attrs, the budget as a constraint,
    and the two objective values (val ppl, bytes or latency) to tell the study."""
    if result.stored_bytes != nbytes:  # the analytic count is the contract: never let it drift
        raise RuntimeError(f"analytic {nbytes} bytes != built model {result.stored_bytes} bytes")
    feasible = ctx.constraint(result) <= 0
    for key in ("val_ppl", "latency_ms", "seconds", "finetune_seconds", "build_seconds", "steps"):
        trial.set_user_attr(key, getattr(result, key))
    trial.set_user_attr("curve", {str(k): v for k, v in result.curve.items()})
    trial.set_user_attr("feasible", feasible)
    trial.set_constraint("budget", ctx.constraint(result))
    second = result.latency_ms if ctx.budget.kind == "latency" else float(nbytes)
    return result.val_ppl, second


def counted_trials(study: optuna.Study) -> int:
    """Finished trials that count toward --trials: a crashed trial that was retried does not
    (its retry does), nor one whose over-budget plan was repaired into a new trial, so neither a
    crash nor a repair costs the user a trial."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    return sum(
        1 for t in trials if t.state.is_finished() and t.number not in retried and not t.user_attrs.get(REPAIRED)
    )


class TrialCap:
    """MaxTrialsCallback, counting as `counted_trials` does, across resumes."""

    def __init__(self, trials: int):
        self.trials = trials

    def __call__(self, study: optuna.Study, trial) -> None:
        if counted_trials(study) >= self.trials:
            study.stop()


def load_study(run_dir: str | Path) -> "optuna.Study":
    """The run's study, opened for reading: it may still be running in another process."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    db = Path(run_dir) / "study.db"
    if not db.is_file():
        profiled = (Path(run_dir) / "profile.csv").is_file()  # an `autoshrink profile` folder: point at its table
        raise UserError(
            f"{run_dir} has no study.db: no search has run there yet"
            + (f"; its profile: autoshrink profile {run_dir}" if profiled else "")
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{db}")
    except KeyError:
        raise UserError(f"{db} holds no autoshrink study") from None
    except SQLAlchemyError as e:
        raise _unreadable(db, e) from None


def _unreadable(db: Path, error: Exception, fix: str = "") -> UserError:
    reason = str(getattr(error, "orig", None) or error).splitlines()[0]  # sqlite's own words, not SQLAlchemy's
    return UserError(f"{db} cannot be read as an autoshrink study ({reason})" + (f": {fix}" if fix else ""))
