"""bench/lstm_factorings: data-aware factorisations of an LSTM's matrices at equal parameters."""

from __future__ import annotations

import pytest
import torch

from autoshrink.bench.lstm_factorings import greedy_gate_ranks, variants, whitened_lowrank


def test_with_an_identity_covariance_the_whitened_factorisation_is_the_truncated_svd():
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    approx = whitened_lowrank(w, torch.eye(8), 3)
    s = torch.linalg.svdvals(w)
    assert torch.linalg.matrix_rank(approx) == 3
    # Eckart-Young: the error is the tail of the spectrum (up to the covariance's tiny ridge).
    assert torch.linalg.norm(w - approx) ** 2 == pytest.approx((s[3:] ** 2).sum().item(), rel=1e-3)


def test_every_structure_spends_at_most_the_separate_plan_s_parameters_and_keeps_the_shapes():
    torch.manual_seed(0)
    h = 8
    weights = {(i, k): torch.randn(4 * h, h) for i in range(2) for k in ("ih", "hh")}
    x = torch.randn(200, h)
    cov = {(i, k): x.T @ x / 200 for i in range(2) for k in ("ih", "hh")}
    cov.update(
        {(i, "cat"): torch.cat([x, x.roll(1, 0)], 1).T @ torch.cat([x, x.roll(1, 0)], 1) / 200 for i in range(2)}
    )
    found = variants(weights, cov, 2)
    separate = found["separate, rank 2 each"][1]
    assert separate == 4 * (4 * h + h) * 2
    for name, (new, params) in found.items():
        assert params <= separate, name
        assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in weights.items()}, name
    assert sum(greedy_gate_ranks(weights[(0, "ih")], cov[(0, "ih")], 5)) == 5
