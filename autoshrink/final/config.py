"""TrainConfig: every setting of a final training (`autoshrink train`), each default defined once
(the CLI's flags and `--help` are generated from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoshrink.errors import UserError
from autoshrink.models.schedule import SCHEDULES, check_schedule
from autoshrink.models.training import DEFAULT_DISTILL_WEIGHT, DEFAULT_LR

DEFAULT_EPOCHS = 3.0  # the cap; validation-driven stopping usually ends it sooner (results/recipe.md)


@dataclass
class TrainConfig:
    trial: str = field(
        default="best",
        metadata={
            "help": (
                "best (lowest val ppl on the front), a trial number, or smallest:PPL (fewest bytes on the front with "
                "val ppl <= PPL)"
            )
        },
    )
    steps: int | None = field(
        default=None,
        metadata={
            "help": (
                f"training steps in all, counted across resumes (default: {DEFAULT_EPOCHS:g} epochs, fewer when "
                "validation stops improving)"
            )
        },
    )
    epochs: float | None = field(default=None, metadata={"help": "training length in epochs of the train split"})
    time: float | None = field(default=None, metadata={"help": "wall-clock cap in seconds, counted across resumes"})
    out: str | None = field(default=None, metadata={"help": "export folder (default: RUN_DIR/final)"})
    data: str | None = field(
        default=None, metadata={"help": "the corpus of the search (default: the one run.json names)"}
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": (
                "the dense model of the search (default: the one run.json names; from Python also your own torch model)"
            )
        },
    )
    distill: bool = field(
        default=True,
        metadata={
            "help": ("distil: mix KL to the dense model's next-word distribution into the loss (results/recipe.md)")
        },
    )
    distill_weight: float = field(
        default=DEFAULT_DISTILL_WEIGHT,
        metadata={"help": "share of the KL term in the loss, (1 - w) CE + w KL; 1: the teacher's distribution alone"},
    )
    trial_weights: bool = field(
        default=True,
        metadata={
            "help": (
                "start from the trial's fine-tuned weights where the search kept them (front trials); "
                "--no-trial-weights compresses the dense model afresh, as for any other trial"
            )
        },
    )
    lr: float = field(default=DEFAULT_LR, metadata={"help": "peak learning rate (Adam)"})
    schedule: str = field(
        default="cosine",
        metadata={
            "help": "cosine: 5%% warm-up then cosine decay to the step cap; plateau: the lr / 4 at each validation "
            "without improvement",
            "choices": SCHEDULES,
        },
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    seed: int = field(default=0, metadata={"help": "training seed"})
    evals: int = field(default=10, metadata={"help": "validations (and checkpoints) over the training"})

    def __post_init__(self) -> None:
        self.trial = str(self.trial)
        check_schedule(self.schedule)
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}")
        if (self.steps is not None and self.steps < 1) or (self.epochs is not None and self.epochs <= 0):
            raise UserError(f"--steps must be >= 1 and --epochs > 0, got steps={self.steps}, epochs={self.epochs}")
        if self.steps is not None and self.epochs is not None:
            raise UserError("give --steps or --epochs, not both")
        if self.time is not None and self.time <= 0:
            raise UserError(f"--time must be > 0 seconds, got {self.time}")
        if not 0 < self.distill_weight <= 1:
            raise UserError(
                f"--distill-weight must be in (0, 1] (--no-distill trains without it), got {self.distill_weight}"
            )
        if self.evals < 1:
            raise UserError(f"--evals must be >= 1, got {self.evals}")
