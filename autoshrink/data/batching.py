"""Batching for LM training: a token stream cut into B parallel streams, read in BPTT windows."""

from __future__ import annotations

from typing import Iterator

import torch


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(T, B) columns of consecutive tokens; the tail that does not fill a row is dropped."""
    steps = ids.numel() // batch_size
    if steps < 2:
        raise ValueError(f"{ids.numel()} tokens are too few for batch size {batch_size}")
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def bptt_windows(columns: torch.Tensor, bptt: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(input, target) windows of at most `bptt` steps; targets are inputs shifted by one."""
    for start in range(0, columns.size(0) - 1, bptt):
        length = min(bptt, columns.size(0) - 1 - start)
        yield columns[start : start + length], columns[start + 1 : start + 1 + length]


def num_windows(columns: torch.Tensor, bptt: int) -> int:
    return -(-(columns.size(0) - 1) // bptt)
