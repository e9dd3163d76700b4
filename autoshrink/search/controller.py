"""`search()`: set up a run (model, data, space, budget), check feasibility, run a backend,
keep the run folder current and report progress, then return the front."""

from __future__ import annotations

import json
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import optuna
import pandas as pd
import torch
from torch import nn

from autoshrink.plan.repair import repair
from autoshrink.search.budget import Budget
from autoshrink.search.config import SearchConfig
from autoshrink.data import LMData
from autoshrink.errors import UserError
from autoshrink.sites import Site
from autoshrink.models.progress import TrainingProgress, duration
from autoshrink.measure.latency import LatencyTable
from autoshrink.plan import ModelFile
from autoshrink.search import optuna_backend, run_folder
from autoshrink.search import study as study_db
from autoshrink.search.allocation import allocated_plans, allocation, profile_options, untrained_ppl
from autoshrink.search.prepare import calibration, load_inputs, run_identity, target
from autoshrink.search.profile_sampler import ProfileGuidedSampler
from autoshrink.search.owner import active, new_owner
from autoshrink.search.warm_start import enqueue_uniform_seeds, uniform_seeds
from autoshrink.search.space import SearchSpace, smallest_plan
from autoshrink.search.trial import TrialResult, TrialSettings, rungs, val_slice


@dataclass
class SearchContext:
    model: nn.Module
    data: LMData
    sites: list[Site]
    space: SearchSpace
    budget: Budget
    dense_bytes: int
    settings: TrialSettings
    freqs: torch.Tensor
    max_bytes: int | None = None
    model_file: ModelFile | None = None  # the dense model's file (its tensors): what a plan changes
    latency: object | None = None  # LatencyTable for latency budgets
    rule: Callable = field(default=lambda nbytes: None)
    fallback: dict = field(default_factory=dict)  # each site's smallest setting in the space
    stats: dict | None = None  # per-site calibration statistics for data-aware builds (calibrate.py)
    owner: dict = field(default_factory=new_owner)  # recorded on every trial this search runs
    run_dir: Path | None = None  # where front trials keep their fine-tuned weights (None: nowhere)
    progress: Callable[[int], TrainingProgress | None] = field(default=lambda number: None)  # per trial number
    map_options: Callable | None = None  # how the profile measures its options (search/ray_profile.py with Ray)
    profile_finetune: int = 0  # per-site fine-tune steps before each profile measurement, every method (0: none)

    def repair(self, plan: dict) -> dict | None:
        if self.budget.kind == "latency":
            return repair(
                plan,
                self.sites,
                None,
                self.freqs,
                fallback=self.fallback,
                step=self.space.shrink,
                fits=lambda p: self.latency.estimate_ms(p) <= self.budget.value,
            )
        return repair(
            plan,
            self.sites,
            self.max_bytes,
            self.freqs,
            fallback=self.fallback,
            model_file=self.model_file,
            step=self.space.shrink,
        )

    def constraint(self, result: TrialResult) -> float:
        """<= 0 when the measured trial meets the budget (Optuna's constraint convention)."""
        if self.budget.kind == "latency":
            return result.latency_ms - self.budget.value
        return float(result.stored_bytes - self.max_bytes)

    def settings_for(self, number: int) -> TrialSettings:
        return replace(self.settings, seed=self.settings.seed + number)


@dataclass
class SearchResult:
    run_dir: Path
    study: optuna.Study
    front: "object"  # pandas DataFrame of front trials
    config: SearchConfig | None = None  # every setting as the search ran (a resume's from run.json)


def _progress_line(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, total: int, started: float, done_before: int, front
) -> str:
    a = trial.user_attrs
    k = study_db.counted_trials(study)  # a failed try that was retried does not count
    this_session = max(1, k - done_before)
    eta = (time.time() - started) / this_session * max(0, total - k)
    best = f"best {front['val_ppl'].min():.2f}" if not front.empty else "no front yet"
    ratio = f"{a['ratio']:.1f}x" if a.get("ratio") else "-"
    ppl = f"val ppl {a['val_ppl']:.2f}" if a.get("val_ppl") else "val ppl -"
    secs = f"{a.get('seconds', 0) or 0:.0f}s"
    state = trial.state.name  # Optuna's, as in trials.csv
    if trial.state == optuna.trial.TrialState.COMPLETE and not a.get("feasible"):
        state += " over budget"
    mix = run_folder.method_mix(a.get("plan", {}))
    return (
        f"trial {k}/{total} #{trial.number} {state:<8} {ratio:>7} {ppl:<14} {secs:>5}  {best}  "
        f"ETA {duration(eta)}  [{mix}]"
    )


def search(config: SearchConfig, command: str | None = None, log: Callable[[str], None] | None = None) -> SearchResult:
    """Per-layer search to a Pareto front under `config.budget` ("25x", "1.5MB", "4ms"); see
    docs/how-it-works.md.
    Returns the run folder, the study and the front. `config.model` may be a preset name, a
    model folder (autoshrink's or a local Hugging Face causal LM), or any torch LM module with
    `config.data` given (its forward conventions found or declared: models/adapter.py `adapt`).
    `space` None: search_spaces/default.yaml, or transformer.yaml for a model with attention/mlp
    sites (said in the log). A new search starts from single-method plans unless `warm_start` is False
    (search/warm_start.py). With `backend="ray"`, `workers` trials run at once through Ray Tune,
    each on `cpus_per_trial` threads, locally or on the cluster at `address`."""
    session_start = time.time()
    recorded = run_folder.recorded_settings(config.run_dir) or {}
    c = config.resolved(recorded, config.run_dir)  # a resume keeps its settings
    budget, trials, timeout = c.budget, c.trials, c.timeout
    backend, workers, address, device, seed = c.backend, c.workers, c.address, c.device, c.seed
    sampler, distill, warm_start, cpus_per_trial = c.sampler, c.distill, c.warm_start, c.cpus_per_trial
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    named = target(c)  # bad input fails first
    b, spc, model_name, data_path, folder = named
    # A resumed run's study is opened first: a corrupt study.db is refused before anything is loaded.
    study = study_db.open_study(folder, sampler, seed) if (folder / "study.db").exists() else None
    inputs = load_inputs(c, named, recorded, log)
    dense, data, sites, spc, nbytes, freqs, model_file, max_bytes = inputs
    settings = TrialSettings(
        finetune_steps=c.finetune_steps, halving=c.halving, device=device, seed=seed, distill=distill
    )
    folder.mkdir(parents=True, exist_ok=True)
    latency = (
        LatencyTable(dense, device="cpu", path=folder / "latency_cache.json", freqs=freqs)
        if b.kind == "latency"
        else None
    )
    smallest = smallest_plan(spc, sites, freqs)
    if latency is not None:
        fastest = min(latency.dense_ms, latency.estimate_ms(smallest))
        if fastest > b.value:
            raise UserError(
                f"latency budget {b.text} cannot be met: the dense model takes {latency.dense_ms:.2f} ms "
                f"and the smallest plan of the space about {latency.estimate_ms(smallest):.2f} ms"
            )
    study = study or study_db.open_study(folder, sampler, seed)
    spent: dict[str, float] = {}  # seconds of this session's cheap steps, for the closing time line
    started_calibration = time.time()
    stats = calibration(inputs, c.calibration_tokens, log)
    if stats is not None:
        spent["calibration"] = time.time() - started_calibration
    ray_options = _ray_options(backend, workers, cpus_per_trial, address)  # None without Ray
    ctx = SearchContext(
        dense,
        data,
        sites,
        spc,
        b,
        nbytes,
        settings,
        freqs,
        max_bytes,
        model_file,
        latency,
        rule=study_db.HalvingRule(study, c.halving),
        fallback=smallest,
        stats=stats,
        progress=lambda number: TrainingProgress(f"trial #{number}", log=log),
        run_dir=folder,
        map_options=ray_options,
    )
    measured = None  # this search's allocation (a new study's), whose profile the profile sampler reuses
    if not study.get_trials(deepcopy=False):  # a new study: its first trials are chosen, not sampled
        started_allocation = time.time()
        measured = allocation(ctx, folder, log) if c.allocate else None
        allocated = allocated_plans(measured, max(1, trials // 2), log)
        spent["profile and allocation"] = time.time() - started_allocation
        for source, plan in allocated:
            study.enqueue_trial(spc.params_of(plan, sites), user_attrs={"allocated": source})
        if warm_start and max_bytes is not None:
            seeds = uniform_seeds(spc, sites, max_bytes, freqs, model_file, untrained_ppl(ctx))[: max(1, trials // 2)]
            if enqueue_uniform_seeds(study, seeds, after=len(allocated)):
                log(
                    f"warm start: {len(seeds)} trial(s) put one method on every site "
                    f"({', '.join(m for m, _ in seeds)}), fitted to the budget at their best storage width: the controls to beat"
                )
    if isinstance(study.sampler, ProfileGuidedSampler):
        _attach_profile(study.sampler, ctx, folder, log, None if measured is None else measured.table)
    run_folder.write_run_json(
        folder,
        {
            "command": command or f"search({budget!r})",
            **run_identity(named, inputs),
            "seed": seed,
            "sampler": sampler,
            "distill": distill,
            "warm_start": warm_start,
            "trials": trials,
            "backend": backend,
            **({"workers": workers, "cpus_per_trial": cpus_per_trial, "address": address} if backend == "ray" else {}),
            "finetune_steps": settings.finetune_steps,
            "trial_lr": settings.lr,
            "halving": settings.halving,
            "eval_tokens": settings.eval_tokens,
            "allocate": c.allocate,
            "calibration_tokens": c.calibration_tokens,
            "dense_bytes": nbytes,
            "dense_val_ppl": (dense_val := _dense_val(dense, data, settings, folder)),
            "versions": {
                "autoshrink": __import__("autoshrink").__version__,
                "torch": torch.__version__,
                "optuna": optuna.__version__,
                "python": platform.python_version(),
                **({"ray": _ray_version()} if backend == "ray" else {}),
            },
        },
    )
    orphans = study_db.fail_orphans(study)
    done_before = study_db.counted_trials(study)
    log(
        f"search {model_name} under {b.text} ({max_bytes:,} bytes) -> {folder}"
        if max_bytes
        else f"search {model_name} under {b.text} -> {folder}"
    )
    log(
        f"each trial fine-tunes {settings.finetune_steps} steps{' with distillation' if distill else ''}"
        + _halving_note(settings)
        + f"; val ppl: {val_slice(settings.eval_tokens)} (dense model: {dense_val:.2f})"
    )
    if done_before:
        log(f"resuming: {done_before} trial(s) already finished")
    for line in orphans:
        log(line)
    started = time.time()
    objective = "latency_ms" if b.kind == "latency" else "stored_bytes"

    def after_trial(st: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        front = run_folder.write(folder, st, objective)  # the front once, for the files and the line
        if not trial.user_attrs.get(study_db.REPAIRED):  # a draw repaired into a new trial is not one
            log(_progress_line(st, trial, trials, started, done_before, front))

    with active(ctx.owner), ray_options or nullcontext():  # a Ray the profile started serves the trials too
        if backend == "ray":
            from autoshrink.search import ray_backend

            ray_backend.run(
                ctx,
                study,
                trials,
                timeout,
                [after_trial],
                workers=workers,
                address=address,
                threads=cpus_per_trial,
                run_dir=folder,
                log=log,
            )
        else:
            optuna_backend.run(ctx, study, trials, timeout, [after_trial])
    front = run_folder.write(folder, study, objective)
    log(_time_line(study, spent, started, session_start))
    return SearchResult(folder, study, front, replace(c, run_dir=folder))


def _attach_profile(
    sampler: ProfileGuidedSampler, ctx: SearchContext, folder: Path, log: Callable, table: pd.DataFrame | None
) -> None:
    """Give the profile-guided sampler the run's profile: `table`, the one this search's allocation
    measured, or (a resumed search) the one read back from the run folder."""
    found = profile_options(ctx, folder, table)
    if found is None:
        log(
            "sampler profile: this search has no profile (a latency budget, or sites compressed in place): "
            "its plans are drawn at random"
        )
        return
    options, capacity = found
    sampler.attach(options, capacity, lambda plan: ctx.space.params_of(plan, ctx.sites), ctx.max_bytes - capacity)


def _time_line(study: optuna.Study, spent: dict[str, float], started: float, session_start: float) -> str:
    """Where this session's time went: the cheap steps, then the trials it ran (builds, fine-tuning,
    the rest: validation, latency, bookkeeping)."""
    trials = [
        t for t in study.get_trials(deepcopy=False) if t.datetime_start and t.datetime_start.timestamp() >= started
    ]
    attrs = [t.user_attrs for t in trials if t.user_attrs.get("seconds") is not None]
    total = sum(a["seconds"] for a in attrs)
    builds = sum(a.get("build_seconds", 0.0) for a in attrs)
    tuning = sum(a.get("finetune_seconds", 0.0) for a in attrs)
    parts = [f"{name} {duration(s)}" for name, s in spent.items()]
    parts.append(
        f"{len(attrs)} trial(s) {duration(total)} (builds {duration(builds)}, fine-tuning {duration(tuning)}, "
        f"validation and the rest {duration(max(0.0, total - builds - tuning))})"
    )
    return "time: " + ", ".join(parts) + f"; in all {duration(time.time() - session_start)}"


def _halving_note(settings: TrialSettings) -> str:
    checks = rungs(settings.finetune_steps, settings.halving)
    if settings.halving <= 1 or len(checks) < 2:
        return ""
    return (
        f", judged at steps {', '.join(map(str, checks[:-1]))}: only the best 1/{settings.halving} of plans of no "
        "larger size there train on (successive halving)"
    )


def _ray_options(backend: str, workers: int, threads: int, address: str | None):
    """With Ray, the profile's options are measured on the workers too (None: one after another here)."""
    if backend != "ray":
        return None
    from autoshrink.search.ray_profile import RayOptionMap

    return RayOptionMap(workers, threads, address)


def _ray_version() -> str:
    import ray

    return ray.__version__


def _dense_val(dense: nn.Module, data: LMData, settings: TrialSettings, folder: Path) -> float:
    """The dense model's validation perplexity on the same tokens trials use (cached in run.json)."""
    path = folder / "run.json"
    if path.exists():
        prior = json.loads(path.read_text()).get("dense_val_ppl")
        if prior:
            return prior
    from autoshrink.models.training import evaluate_perplexity

    return evaluate_perplexity(dense, data.valid, max_tokens=settings.eval_tokens, bptt=settings.bptt)
