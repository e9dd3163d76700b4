"""The Optuna backend: trials run one after another in this process by `study.optimize`.

Re-running with the same run folder resumes: finished trials are kept, `--trials` counts
across resumes, and a trial left RUNNING by a crash is failed and retried (search/study.py).
Budgets are constraints set inside the objective (`trial.set_constraint`), and plans are
repaired before training, so no trial trains an infeasible plan.
"""

from __future__ import annotations

import time
from typing import Callable

import optuna

from autoshrink.models.training import DivergedError
from autoshrink.search.study import TrialCap, counted_trials, fail_orphans, prepare_plan, record_result, record_stopped
from autoshrink.search.run_folder import keep_weights
from autoshrink.search.trial import StopTrial, run_trial


def make_objective(ctx) -> Callable[[optuna.Trial], tuple[float, float]]:
    """`ctx` is the search context (search/controller.py): model, data, sites, space, limits."""

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        start = time.perf_counter()
        prepared = prepare_plan(trial, ctx)
        if prepared is None:
            raise optuna.TrialPruned("infeasible plan")
        fixed, nbytes = prepared
        settings = ctx.settings_for(trial.number)
        progress = ctx.progress(trial.number)
        try:
            result = run_trial(
                ctx.model,
                fixed,
                ctx.data,
                settings,
                ctx.dense_bytes,
                should_stop=ctx.rule(nbytes),
                progress=progress,
                stats=ctx.stats,
            )
        except StopTrial as stop:
            record_stopped(
                trial, stop.step, stop.val_ppl, time.perf_counter() - start, f"stopped early: {stop}", stop.curve
            )
            raise optuna.TrialPruned(str(stop)) from None
        except DivergedError as e:
            trial.set_user_attr("note", f"failed: {e}")
            raise
        finally:
            if progress is not None:
                progress.close()  # before the trial's line (the search's callback) is printed
        values = record_result(trial, ctx, result, nbytes)
        if ctx.run_dir is not None and ctx.constraint(result) <= 0:  # it may land on the front: keep its weights
            keep_weights(ctx.run_dir, trial.number, result.model)
        return values

    return objective


def run(ctx, study: optuna.Study, trials: int, timeout: float | None, callbacks: list) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fail_orphans(study)  # a trial a crash left RUNNING: FAIL it now, its retry is queued (and runs first)
    if counted_trials(study) >= trials:
        return
    study.optimize(
        make_objective(ctx),
        n_trials=None,
        timeout=timeout,
        callbacks=[TrialCap(trials)] + callbacks,
        catch=(DivergedError,),
        gc_after_trial=True,
    )
