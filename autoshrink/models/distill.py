"""Distillation from the dense model: the teacher's soft targets for `train_lm`.

The teacher reads the same windows as the student and carries its own recurrent state between
them (a teacher restarted at every window predicts the window's first words from nothing). The
loss is KL(teacher || student) on the logits at temperature 1, averaged per token, mixed with
the usual cross-entropy: (1 - weight) * CE + weight * KL.

Caching the teacher's top-k logits once instead of a forward each step was measured on
kjv-lstm (CPU, one thread, 25x low-rank student): a teacher forward is 0.23 s per window of
32 x 35 tokens, against 0.52 s for the student's whole step; a cache costs one teacher pass over
the train split (755 windows, about 170 s) and 217 MB at k=64. It pays only after about one
epoch of steps (never for trials, little for a 3-epoch cap) and top-k drops the tail of the
teacher's distribution, so the teacher runs each step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Teacher:
    """A frozen model in eval mode that follows the student's window stream."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.state = None

    def reset(self) -> None:
        self.state = None

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out, self.state = self.model(x, self.state)  # no_grad: the state holds no graph
        return out


def kl_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) at temperature 1, summed over the vocabulary, averaged over tokens."""
    vocab = student_logits.size(-1)
    student = F.log_softmax(student_logits.float().reshape(-1, vocab), -1)
    teacher = F.log_softmax(teacher_logits.float().reshape(-1, vocab), -1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def mixed_loss(
    ce: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor, weight: float
) -> torch.Tensor:
    return (1.0 - weight) * ce + weight * kl_per_token(student_logits, teacher_logits)
