"""SearchConfig: every setting of a search, each default defined once (the CLI's flags and
`--help` are generated from these fields; `autoshrink.search(SearchConfig(...))` takes them).

The settings a run's study depends on (RECORDED: model, data, space, fine-tuning steps,
successive halving, distillation, sampler, seed, calibration tokens) default to None, "not given": a new run takes the default below, a
resumed run the value its run.json records (`SearchConfig.resolved`). A given value that
contradicts the record is refused, so a study never mixes trials of two settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoshrink.calibrate import DEFAULT_TOKENS
from autoshrink.errors import UserError
from autoshrink.models.presets import PRESETS
from autoshrink.search.budget import parse_budget
from autoshrink.search.space import DEFAULT_SPACE, TRANSFORMER_SPACE
from autoshrink.search.study import SAMPLERS
from autoshrink.search.trial import TrialSettings

BACKENDS = ("optuna", "ray")


# What a run is: a resume takes these from run.json (None: not given). Defaults of a new run.
RECORDED: dict[str, Any] = {
    "model": "kjv-lstm",
    "data": "kjv",
    "space": None,
    "finetune_steps": TrialSettings.finetune_steps,
    "halving": TrialSettings.halving,
    "distill": False,
    # The only sampler whose own plans added to the front on the reference model, 3 seeds
    # (results/search-kjv-lstm.md: its best own plan 38.5-39.0 within 25x, random search's 72-213;
    # at c78fef3 TPE's 70-82, TPE being random search for its first 10 trials); TPE led on the tiny
    # model at 24 trials (results/search.md).
    "sampler": "profile",
    "seed": 0,
    "calibration_tokens": DEFAULT_TOKENS,
}
# What `autoshrink profile` takes: the settings a profile depends on or runs with; the rest are the trials'.
PROFILE_SETTINGS = ("budget", "model", "data", "space", "calibration_tokens", "seed", "run_dir", "device")
SHIPPED_SPACES = (DEFAULT_SPACE, TRANSFORMER_SPACE)  # named as is: they are found from any folder


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


def _recorded_help(text: str, name: str, **extra: Any) -> dict:
    default = RECORDED[name]
    shown = "" if default is None else f"default: {default}; "
    return _help(f"{text} ({shown}a resumed run: the one its run.json records)", **extra)


@dataclass
class SearchConfig:
    budget: str = field(
        metadata=_help("25x (whole-model ratio), 1.5MB / 800KB / 2MiB (stored bytes), or 4ms (latency)")
    )
    model: Any = field(
        default=None,
        metadata=_recorded_help(
            "preset, model folder (autoshrink's or a local Hugging Face causal LM), or (Python) a torch LM module",
            "model",
        ),
    )
    data: Any = field(
        default=None, metadata=_recorded_help("kjv, a folder with train/valid/test.txt, or a text file", "data")
    )
    space: Any = field(
        default=None,
        metadata=_recorded_help(
            "search space YAML; default: search_spaces/default.yaml, or transformer.yaml for a transformer", "space"
        ),
    )
    trials: int = field(default=8, metadata=_help("trials in all, counted across resumes"))
    timeout: float | None = field(default=None, metadata=_help("stop starting trials after this many seconds"))
    finetune_steps: int | None = field(
        default=None,
        metadata=_recorded_help("fine-tuning steps per trial (short: enough to rank plans on a CPU)", "finetune_steps"),
    )
    halving: int | None = field(
        default=None,
        metadata=_recorded_help(
            "successive halving: trials are validated at steps/h^k and only the best 1/h of plans of no larger size "
            "train on (1: every trial trains all its steps)",
            "halving",
        ),
    )
    sampler: str | None = field(default=None, metadata=_recorded_help("Optuna sampler", "sampler", choices=SAMPLERS))
    distill: bool | None = field(
        default=None, metadata=_recorded_help("fine-tune trials on soft targets of the dense model too", "distill")
    )
    allocate: bool = field(
        default=True,
        metadata=_help(
            "profile each site's options untrained and start from the knapsack's plans for the budget (byte budgets)"
        ),
    )
    calibration_tokens: int | None = field(
        default=None,
        metadata=_recorded_help(
            "training tokens of the calibration pass that data-aware builds use (0: plain builds)", "calibration_tokens"
        ),
    )
    warm_start: bool = field(
        default=True,
        metadata=_help(
            "start a new search from single-method plans (low-rank, pruning or quantisation on every site, fitted to "
            "the budget)"
        ),
    )
    backend: str = field(
        default="optuna",
        metadata=_help(
            "optuna (one process) | ray (parallel trials through Ray Tune, ASHA early stopping)", choices=BACKENDS
        ),
    )
    workers: int = field(default=1, metadata=_help("trials at once (Ray backend)"))
    cpus_per_trial: int = field(
        default=1,
        metadata=_help("CPU threads per trial (Ray backend; GPUs, when the cluster has them, are shared evenly)"),
    )
    address: str | None = field(
        default=None,
        metadata=_help("join this Ray cluster (auto, or HEAD_HOST:6379) instead of starting Ray locally (Ray backend)"),
    )
    run_dir: Any = field(
        default=None,
        metadata=_help("run folder (default: results/runs/<model>-<budget>-<time>); an existing one is resumed"),
    )
    device: str = field(default="auto", metadata=_help("auto (CUDA with mixed precision when present) | cpu | cuda"))
    seed: int | None = field(default=None, metadata=_recorded_help("sampler and fine-tuning seed", "seed"))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}: use {' or '.join(BACKENDS)}")
        if self.sampler is not None and self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}: use {', '.join(SAMPLERS)}")
        if self.workers < 1 or self.cpus_per_trial < 1:
            raise UserError(
                f"--workers and --cpus-per-trial must be at least 1, got {self.workers} and {self.cpus_per_trial}"
            )
        if self.backend == "optuna" and (self.workers > 1 or self.address or self.cpus_per_trial != 1):
            raise UserError("--workers, --cpus-per-trial and --address run trials through Ray: add --backend ray")
        if self.trials < 1:
            raise UserError(f"--trials must be at least 1, got {self.trials}")
        if self.calibration_tokens is not None and self.calibration_tokens < 0:
            raise UserError(f"--calibration-tokens must be >= 0, got {self.calibration_tokens}")
        if self.halving is not None and self.halving < 1:
            raise UserError(f"--halving must be >= 1 (1: off), got {self.halving}")
        if self.finetune_steps is not None and self.finetune_steps < 0:
            raise UserError(f"--finetune-steps must be >= 0, got {self.finetune_steps}")

    def resolved(self, recorded: dict[str, Any] | None = None, run_dir: Path | str | None = None) -> "SearchConfig":
        """Every RECORDED setting filled in: from `recorded` (what an existing run folder's run.json
        says, run_folder.recorded_settings) where given, else from RECORDED's defaults. A setting
        given here that contradicts the record is a UserError naming the flag, both values and the fix."""
        recorded = recorded or {}
        filled = {}
        if "budget" in recorded and canonical("budget", self.budget) != canonical("budget", recorded["budget"]):
            raise _contradiction("budget", self.budget, recorded["budget"], run_dir)
        for name, default in RECORDED.items():
            given, was = getattr(self, name), recorded.get(name)
            if given is None:
                filled[name] = was if was is not None else default
            elif was is not None and canonical(name, given) != canonical(name, was):
                raise _contradiction(name, given, was, run_dir)
        return dataclasses.replace(self, **filled)

    def flags(self) -> list[str]:
        """The command-line flags that give this config: every setting that differs from its
        default (a complete command, e.g. to resume the run)."""
        out = ["--budget", str(self.budget)]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = RECORDED.get(f.name, f.default)
            plain = isinstance(value, (str, int, float, Path))  # not a torch module or a SearchSpace given in Python
            if f.name == "budget" or value is None or value == default or not plain:
                continue
            if f.name == "space" and str(value) == DEFAULT_SPACE:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                out.append(flag if value else "--no-" + f.name.replace("_", "-"))
            else:
                out += [flag, str(value)]
        return out


def canonical(name: str, value: Any) -> Any:
    """A setting as run.json records it, so that two ways of naming one thing compare equal:
    a model or corpus folder by its absolute path, a budget by its kind and value."""
    if name == "budget":
        b = parse_budget(value)
        return b.kind, round(b.value, 9)
    if name == "model" and not isinstance(value, str):
        return type(value).__name__  # a torch module given in Python
    if name == "data" and not isinstance(value, (str, Path)):
        return getattr(value, "name", type(value).__name__)  # LMData given in Python
    if name == "space" and not isinstance(value, (str, Path)):
        return str(getattr(value, "source", value))  # a SearchSpace given in Python
    if name in ("model", "data", "space"):
        text = str(value)
        if text in PRESETS or text == "kjv" or text in SHIPPED_SPACES:
            return text
        return str(Path(text).expanduser().resolve())
    return value


def _contradiction(name: str, given: Any, was: Any, run_dir: Path | str | None) -> UserError:
    flag = "--" + name.replace("_", "-")
    shown = lambda v: ("on" if v else "off") if isinstance(v, bool) else v  # noqa: E731
    return UserError(
        f"{flag} {shown(given)} contradicts the run in {run_dir}, which was searched with {flag} "
        f"{shown(was)}: leave the flag out to resume that run, or use a new --run-dir"
    )
