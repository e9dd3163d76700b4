"""SearchConfig: every setting of a search, each default defined once (the CLI's flags and
`--help` are generated from these fields; `autoshrink.search(SearchConfig(...))` takes them)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoshrink.calibrate import DEFAULT_TOKENS
from autoshrink.errors import UserError
from autoshrink.search.trial import TrialSettings

BACKENDS = ("optuna", "ray")
SAMPLERS = ("tpe", "nsga2", "random")


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class SearchConfig:
    budget: str = field(metadata=_help("25x (whole-model ratio), 1.5MB / 800KB / 2MiB (stored bytes), or 4ms (latency)"))
    model: Any = field(default="kjv-lstm", metadata=_help(
        "preset, model folder (autoshrink's or a local Hugging Face causal LM), or (Python) a torch LM module"))
    data: Any = field(default="kjv", metadata=_help("kjv, a folder with train/valid/test.txt, or a text file"))
    space: Any = field(default=None, metadata=_help(
        "search space YAML (default: search_spaces/default.yaml; transformer.yaml for transformer models)"))
    trials: int = field(default=8, metadata=_help("trials in all, counted across resumes"))
    timeout: float | None = field(default=None, metadata=_help("stop starting trials after this many seconds"))
    finetune_steps: int = field(default=TrialSettings.finetune_steps, metadata=_help(
        "fine-tuning steps per trial (short: enough to rank plans on a CPU)"))
    sampler: str = field(default="nsga2", metadata=_help("Optuna sampler", choices=SAMPLERS))
    distill: bool = field(default=False, metadata=_help("fine-tune trials on soft targets of the dense model too"))
    allocate: bool = field(default=True, metadata=_help(
        "profile each site's options untrained and start from the knapsack's plans for the budget (byte budgets)"))
    calibration_tokens: int = field(default=DEFAULT_TOKENS, metadata=_help(
        "training tokens of the calibration pass that data-aware builds use (0: plain builds)"))
    warm_start: bool = field(default=True, metadata=_help(
        "start a new search from single-method plans (low-rank, pruning or quantisation on every site, fitted to "
        "the budget)"))
    backend: str = field(default="optuna", metadata=_help(
        "optuna (one process) | ray (parallel trials through Ray Tune, ASHA early stopping)", choices=BACKENDS))
    workers: int = field(default=1, metadata=_help("trials at once (Ray backend)"))
    cpus_per_trial: int = field(default=1, metadata=_help(
        "CPU threads per trial (Ray backend; GPUs, when the cluster has them, are shared evenly)"))
    address: str | None = field(default=None, metadata=_help(
        "join this Ray cluster (auto, or HEAD_HOST:6379) instead of starting Ray locally (Ray backend)"))
    run_dir: Any = field(default=None, metadata=_help(
        "run folder (default: results/runs/<model>-<budget>-<time>); an existing one is resumed"))
    device: str = field(default="auto", metadata=_help("auto (CUDA with mixed precision when present) | cpu | cuda"))
    seed: int = field(default=0, metadata=_help("sampler and fine-tuning seed"))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown backend {self.backend!r}: use {' or '.join(BACKENDS)}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}: use {', '.join(SAMPLERS)}")
        if self.workers < 1 or self.cpus_per_trial < 1:
            raise UserError(f"--workers and --cpus-per-trial must be at least 1, got {self.workers} and "
                            f"{self.cpus_per_trial}")
        if self.backend == "optuna" and (self.workers > 1 or self.address or self.cpus_per_trial != 1):
            raise UserError("--workers, --cpus-per-trial and --address run trials through Ray: add --backend ray")
        if self.trials < 1:
            raise UserError(f"--trials must be at least 1, got {self.trials}")
        if self.calibration_tokens < 0:
            raise UserError(f"--calibration-tokens must be >= 0, got {self.calibration_tokens}")
        if self.finetune_steps < 0:
            raise UserError(f"--finetune-steps must be >= 0, got {self.finetune_steps}")
