"""The Ray backend: the same multi-objective study, its trials run in parallel by Ray Tune.

One process writes the study: the driver. `StudySearcher` is a Ray Tune `Searcher` that lives
there and owns the run folder's study.db (SQLite locks under parallel writers). It asks the study
for a trial, samples and repairs its plan exactly as the Optuna backend does (`prepare_plan`: an
infeasible plan is told PRUNED and never reaches a worker), and tells the study each outcome.
Workers only train (`run_trial`) and report to Tune. The profile before the trials is measured on
the same Ray (search/ray_profile.py), its rows written by the driver alone.

Ray's own OptunaSearch was read and not used (ray/tune/search/optuna/optuna_search.py, Ray 2.60):
with several objectives `on_trial_result` returns early, dropping every intermediate value, and
`on_trial_complete` tells COMPLETE whenever the last result has the metrics, so a trial that ASHA
stopped lands on the front with under-trained values. Here a trial is COMPLETE only when its
worker reported the end of all its steps; one ASHA stopped is PRUNED with the steps it trained.

Early stopping is Tune's ASHA on intermediate validation perplexity (time in fine-tuning steps),
at the rungs of successive halving that the Optuna backend uses.
Resume is the study's: finished trials stay told; a trial the search left RUNNING (Ctrl-C, the time
budget) is failed and its plan queued again, and one a dead driver left RUNNING is failed and retried
on resume by the mechanism both backends share (search/study.py `fail_orphans`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import TrialState

from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher

from autoshrink.errors import UserError
from autoshrink.models.training import DivergedError
from autoshrink.plan import plan_to_json
from autoshrink.search.study import counted_trials, fail_orphans, interrupt, prepare_plan, record_result, record_stopped
from autoshrink.search.trial import TrialResult, rungs, run_trial

STEP = "finetune_step"  # ASHA's time attribute: fine-tuning steps done (Tune's own keys are reserved)
METRIC = "val_ppl"
RESULT_FIELDS = (
    "val_ppl",
    "stored_bytes",
    "ratio",
    "latency_ms",
    "seconds",
    "finetune_seconds",
    "build_seconds",
    "steps",
)


@dataclass
class _Live:
    trial: optuna.Trial
    nbytes: int
    curve: dict[str, float] = field(default_factory=dict)


class Asha(ASHAScheduler):
    """Tune's ASHA on intermediate val perplexity at the rungs the Optuna backend uses (search/trial.py
    `rungs`: its first rung is the grace period, `halving` the reduction factor), remembering which
    trials it stopped before their last step, and where. Without halving it never stops a trial.
    (Tune's ASHA ranks one metric: the Optuna backend's rule also weighs size, HalvingRule.)"""

    def __init__(self, steps: int, halving: int):
        max_t = max(1, steps)
        checks = rungs(max_t, halving)
        off = halving <= 1 or len(checks) < 2
        super().__init__(
            time_attr=STEP,
            metric=METRIC,
            mode="min",
            max_t=max_t,
            grace_period=max_t if off else checks[0],
            reduction_factor=max(2, halving),
        )
        self.stopped: dict[str, int] = {}

    def on_trial_result(self, controller, trial, result):
        action = super().on_trial_result(controller, trial, result)
        if action == self.STOP and not result.get("complete"):
            self.stopped[trial.trial_id] = result.get(STEP)
        return action


class StudySearcher(Searcher):
    """Ray Tune's view of the study: `suggest` asks it, `on_trial_*` tell it. `stopped_early`
    maps Tune trial ids to the step where the scheduler stopped them; `callbacks(study, frozen)`
    run after every told trial, as Optuna's do. After `deadline` (time.time()) no trial starts,
    and running ones finish: Optuna's `timeout`, not Tune's `time_budget_s`, which cuts them."""

    def __init__(
        self,
        ctx,
        study: optuna.Study,
        trials: int,
        callbacks: list[Callable] = (),
        stopped_early: dict[str, int] | None = None,
        deadline: float | None = None,
    ):
        super().__init__(metric=METRIC, mode="min")
        self.ctx, self.study, self.trials, self.callbacks = ctx, study, trials, list(callbacks)
        self.stopped_early = stopped_early if stopped_early is not None else {}
        self.deadline = deadline
        self.live: dict[str, _Live] = {}

    def suggest(self, trial_id: str) -> dict | str | None:
        while counted_trials(self.study) + len(self.live) < self.trials:
            if self.deadline is not None and time.time() >= self.deadline:
                break
            with warnings.catch_warnings():  # asked outside Study.optimize on purpose: one writer
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                trial = self.study.ask()
            retry_of = self.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
            if retry_of is not None:  # it inherited the interrupted try's user attrs, note included
                trial.set_user_attr("note", f"retry of trial {retry_of}")
            prepared = prepare_plan(trial, self.ctx)
            if prepared is None:  # rejected at zero training cost, counted like the Optuna backend's
                self._tell(trial, TrialState.PRUNED)
                continue
            fixed, nbytes = prepared
            self.live[trial_id] = _Live(trial, nbytes)
            return {
                "plan": plan_to_json(fixed),
                "number": trial.number,
                "seed": self.ctx.settings_for(trial.number).seed,
            }
        return self.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        live = self.live.get(trial_id)
        if live is not None:
            self._add_to_curve(live, result)

    @staticmethod
    def _add_to_curve(live: _Live, result: dict) -> None:
        """Intermediate values, which Ray's OptunaSearch drops for several objectives."""
        if result.get("complete") or METRIC not in result or STEP not in result:
            return
        live.curve[str(result[STEP])] = result[METRIC]
        live.trial.set_user_attr("curve", live.curve)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        live = self.live.pop(trial_id, None)
        if live is None:
            return
        r, trial = result or {}, live.trial
        if error or r.get("failed"):
            trial.set_user_attr(
                "note", f"failed: {r.get('failed') or 'error in the Ray worker (see ray/ in the run folder)'}"
            )
            self._tell(trial, TrialState.FAIL)
        elif r.get("complete"):
            fields = {k: r[k] for k in RESULT_FIELDS}
            res = TrialResult(**fields, curve={int(k): v for k, v in json.loads(r["curve"]).items()})
            try:
                values = record_result(trial, self.ctx, res, live.nbytes)
            except RuntimeError as e:
                trial.set_user_attr("note", f"failed: {e}")
                self._tell(trial, TrialState.FAIL)
            else:
                self._tell(trial, TrialState.COMPLETE, values)
        elif trial_id in self.stopped_early:
            step = self.stopped_early.pop(trial_id)
            self._add_to_curve(live, r)  # Tune skips on_trial_result for the result that stopped it
            record_stopped(
                trial,
                step,
                r.get(METRIC),
                r.get("time_total_s", 0.0),
                f"stopped by ASHA at step {step} (val ppl {r.get(METRIC, float('nan')):.2f})",
                {int(k): v for k, v in live.curve.items()},
            )
            self._tell(trial, TrialState.PRUNED)
        else:  # stopped by Tune, not by ASHA (Ctrl-C, shutdown): not a result, run it again on resume
            interrupt(
                self.study,
                trial.number,
                f"interrupted at step {r.get(STEP, 0)}: the search stopped first (a plan is retried once)",
            )

    def _tell(self, trial: optuna.Trial, state: TrialState, values=None) -> None:
        frozen = self.study.tell(trial, values, state=state)
        for callback in self.callbacks:
            callback(self.study, frozen)

    def interrupt_live(self) -> None:
        """Leave no trial RUNNING when the search ends: each is failed and queued again."""
        for trial_id in list(self.live):
            interrupt(
                self.study,
                self.live.pop(trial_id).trial.number,
                "interrupted: the search stopped first (a plan is retried once)",
            )

    def save(self, checkpoint_path: str) -> None:
        """The study is the state to resume from (see the module docstring); nothing to save."""

    def restore(self, checkpoint_path: str) -> None:
        pass


def _trainable(config: dict, dense, data, settings, dense_bytes: int, threads: int, stats=None) -> None:
    """One trial on a Ray worker: fine-tune the plan, reporting each validation to Tune (ASHA
    decides there), then the full result with `complete` set."""
    from ray import tune

    torch.set_num_threads(threads)

    def report(step: int, val: float) -> None:
        tune.report({METRIC: val, STEP: step})
        return None

    try:
        result = run_trial(
            dense,
            config["plan"],
            data,
            replace(settings, seed=config["seed"]),
            dense_bytes,
            should_stop=report,
            stats=stats,
        )
    except DivergedError as e:
        tune.report({"failed": str(e)})
        return
    tune.report(
        {
            "complete": True,
            STEP: result.steps,
            **{k: getattr(result, k) for k in RESULT_FIELDS},
            "curve": json.dumps({str(k): v for k, v in result.curve.items()}),
        }
    )


def start_ray(address: str | None, workers: int, threads: int) -> bool:
    """Join `address` or start a local Ray sized to the workers; True when we started it."""
    import ray

    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False, configure_logging=True)
    if address and address != "auto" and not address.startswith("ray://"):
        _check_reachable(address)  # Ray itself retries for a minute, then exits the process
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(address="local", num_cpus=workers * threads, **quiet)  # private, even if a cluster runs here
    except (ConnectionError, RuntimeError) as e:
        hint = "" if address == "auto" else " (a head started by Ray 2.60 wants RAY_AUTH_MODE=token and its token)"
        raise UserError(f"cannot reach a Ray cluster at {address!r}: {str(e).splitlines()[0]}{hint}") from None
    return True


def _check_reachable(address: str) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must be auto or HOST:PORT (the head's GCS port, 6379 by default), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at {address}: {e} (started with `ray start --head`?)") from None


def run(
    ctx,
    study: optuna.Study,
    trials: int,
    timeout: float | None,
    callbacks: list,
    workers: int = 1,
    address: str | None = None,
    threads: int = 1,
    run_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Run the search to `trials` finished trials (counted across resumes) with `workers`
    trials at a time, each on `threads` CPU threads and a share of the GPUs when the cluster has them."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables; our progress lines are the UI
    import ray
    from ray import tune

    logging.getLogger("ray.tune").setLevel(logging.ERROR)  # e.g. "resume with Tuner.restore": here the study resumes
    fail_orphans(study)
    if counted_trials(study) >= trials:
        return
    started = start_ray(address, workers, threads)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        resources = {"cpu": threads, "gpu": round(min(1.0, gpus / workers), 4) if gpus else 0}
        asha = Asha(ctx.settings.finetune_steps, ctx.settings.halving)
        searcher = StudySearcher(
            ctx,
            study,
            trials,
            callbacks,
            stopped_early=asha.stopped,
            deadline=time.time() + timeout if timeout else None,
        )
        trainable = tune.with_resources(
            tune.with_parameters(
                _trainable,
                dense=ctx.model,
                data=ctx.data,
                settings=ctx.settings,
                dense_bytes=ctx.dense_bytes,
                threads=threads,
                stats=ctx.stats,
            ),
            resources,
        )
        folder = Path(run_dir or ".").resolve() / "ray"
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=asha,
                num_samples=-1,
                max_concurrent_trials=workers,
                reuse_actors=True,
                trial_dirname_creator=lambda t: f"trial_{t.config['number']}",
            ),
            run_config=tune.RunConfig(name=time.strftime("tune-%Y%m%d-%H%M%S"), storage_path=str(folder), verbose=0),
        )
        try:
            tuner.fit()
        finally:
            if searcher.live:
                log(
                    f"interrupted: {len(searcher.live)} unfinished trial(s) marked failed and queued again; "
                    "run the same command to resume"
                )
            searcher.interrupt_live()
    finally:
        if started:
            ray.shutdown()
