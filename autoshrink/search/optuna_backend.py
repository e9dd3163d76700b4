"""The Optuna backend: a multi-objective study (val perplexity, bytes or latency) in SQLite.

Re-running with the same run folder resumes: finished trials are kept, `--trials` counts
across resumes (MaxTrialsCallback), and a trial left RUNNING by a crash is failed by the
heartbeat and retried (RetryHeartbeatStaleTrialCallback). Optuna's pruners refuse
multi-objective studies (optuna#3450), so weak trials are stopped by our own rule (`WeakTrialRule`)
and recorded as PRUNED with the steps they trained. Budgets are constraints set inside the
objective (`trial.set_constraint`), and plans are repaired before training, so no trial trains an
infeasible plan.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from autoshrink.errors import UserError
from autoshrink.models.training import DivergedError
from autoshrink.plan import plan_stored_bytes, plan_to_json
from autoshrink.space import sample_plan
from autoshrink.trial import StopTrial, TrialResult, run_trial

STUDY_NAME = "autoshrink"
# A crashed trial is noticed two heartbeats after its last one, when the search resumes.
HEARTBEAT_S = int(os.environ.get("AUTOSHRINK_HEARTBEAT_S", "15"))
SAMPLERS = ("tpe", "nsga2", "random")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        # multivariate + group: the conditional per-site knobs are modelled jointly per method.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=6)
    if name == "nsga2":
        # The default: its hypervolume led TPE and random search at 12-24 trials (results/search.md).
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise UserError(f"unknown sampler {name!r}: use {', '.join(SAMPLERS)}")


def open_study(run_dir: Path, sampler: str, seed: int) -> optuna.Study:
    # Heartbeats, grouped TPE and fail_stale_trials are marked experimental by Optuna; we rely
    # on them knowingly, and the progress lines are our own: keep the user's terminal clean.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = RDBStorage(f"sqlite:///{run_dir / 'study.db'}", heartbeat_interval=HEARTBEAT_S,
                         grace_period=2 * HEARTBEAT_S,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=["minimize", "minimize"],
                                sampler=make_sampler(sampler, seed), load_if_exists=True)
    done = len(study.get_trials(deepcopy=False))
    if done:  # a resumed search: a sampler seeded as before would draw its first plans again
        study.sampler = make_sampler(sampler, seed + done)
    return study


class WeakTrialRule:
    """Stop a trial whose validation perplexity at a step is worse, by `margin`, than that of a
    completed feasible trial of no larger size at the same step: it would most likely end
    dominated. (A multi-objective analogue of the median rule, since a small model is allowed
    to be worse than a large one.)"""

    def __init__(self, study: optuna.Study, margin: float = 0.05):
        self.study, self.margin = study, margin

    def __call__(self, nbytes: int) -> Callable[[int, float], str | None]:
        peers = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                 if t.user_attrs.get("feasible") and t.user_attrs.get("stored_bytes", math.inf) <= nbytes]

        def should_stop(step: int, val: float) -> str | None:
            for t in peers:
                ref = t.user_attrs.get("curve", {}).get(str(step))
                if ref is not None and val > ref * (1 + self.margin):
                    return (f"at step {step} val ppl {val:.2f} > {ref:.2f} of trial {t.number} "
                            f"({t.user_attrs['stored_bytes']:,} <= {nbytes:,} bytes)")
            return None

        return should_stop


def prepare_plan(trial: optuna.Trial, ctx) -> tuple[dict, int] | None:
    """Sample the trial's plan and repair it to the budget, recording plan, bytes and ratio.
    None when no repair fits: the plan is noted and must not be trained. Both backends use this."""
    plan = sample_plan(trial, ctx.space, ctx.sites)
    fixed = ctx.repair(plan)
    if fixed is None:
        trial.set_user_attr("note", "infeasible: no repair fits the budget (not trained)")
        trial.set_user_attr("plan", plan_to_json(plan))
        return None
    nbytes = plan_stored_bytes(ctx.sites, fixed, ctx.freqs, ctx.model_bytes)
    trial.set_user_attr("plan", plan_to_json(fixed))
    trial.set_user_attr("stored_bytes", nbytes)
    trial.set_user_attr("ratio", ctx.dense_bytes / nbytes)
    return fixed, nbytes


def record_stopped(trial: optuna.Trial, step: int, val_ppl: float | None, seconds: float, note: str) -> None:
    """A trial stopped before its last step: PRUNED, with the fidelity it reached, never on the front."""
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
    for key in ("val_ppl", "latency_ms", "seconds", "finetune_seconds", "steps"):
        trial.set_user_attr(key, getattr(result, key))
    trial.set_user_attr("curve", {str(k): v for k, v in result.curve.items()})
    trial.set_user_attr("feasible", feasible)
    trial.set_constraint("budget", ctx.constraint(result))
    second = result.latency_ms if ctx.budget.kind == "latency" else float(nbytes)
    return result.val_ppl, second


def make_objective(ctx) -> Callable[[optuna.Trial], tuple[float, float]]:
    """`ctx` is the search context (search/controller.py): model, data, sites, space, limits."""

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        start = time.perf_counter()
        prepared = prepare_plan(trial, ctx)
        if prepared is None:
            raise optuna.TrialPruned("infeasible plan")
        fixed, nbytes = prepared
        settings = ctx.settings_for(trial.number)
        try:
            result = run_trial(ctx.model, fixed, ctx.data, settings, ctx.dense_bytes, should_stop=ctx.rule(nbytes))
        except StopTrial as stop:
            record_stopped(trial, stop.step, stop.val_ppl, time.perf_counter() - start, f"stopped early: {stop}")
            raise optuna.TrialPruned(str(stop)) from None
        except DivergedError as e:
            trial.set_user_attr("note", f"failed: {e}")
            raise
        return record_result(trial, ctx, result, nbytes)

    return objective


def counted_trials(study: optuna.Study) -> int:
    """Finished trials that count toward --trials: a crashed trial that was retried does not
    (its retry does), so a crash never costs the user a trial."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    return sum(1 for t in trials if t.state.is_finished() and t.number not in retried)


class TrialCap:
    """MaxTrialsCallback, counting as `counted_trials` does, across resumes."""

    def __init__(self, trials: int):
        self.trials = trials

    def __call__(self, study: optuna.Study, trial) -> None:
        if counted_trials(study) >= self.trials:
            study.stop()


def run(ctx, study: optuna.Study, trials: int, timeout: float | None, callbacks: list) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fail_stale_trials(study)  # a trial a crash left RUNNING: FAIL it now, its retry is queued
    if counted_trials(study) >= trials:
        return
    study.optimize(make_objective(ctx), n_trials=None, timeout=timeout, callbacks=[TrialCap(trials)] + callbacks,
                   catch=(DivergedError,), gc_after_trial=True)
