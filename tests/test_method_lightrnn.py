"""LightRNN (`lightrnn`): the word allocation table, the factorised softmax and the reallocation step."""

from __future__ import annotations

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods import CompressedLinear, config_from_dict, weight_class
from autoshrink.methods._storage import tensors_bytes
from autoshrink.methods.lightrnn import LightRNNWeight, greedy_assign
from autoshrink.sites import Site, SiteStats

V, D = 96, 16


def _target(seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, 4, generator=g) @ torch.randn(4, D, generator=g) / 2 + 0.3 * torch.randn(V, D, generator=g)


def _build(role="softmax", w=None, freqs=None, **knobs) -> LightRNNWeight:
    cfg = config_from_dict({"method": "lightrnn", **knobs})
    return weight_class(cfg).build(
        _target() if w is None else w, Site(f"toy.{role}", role, (V, D)), cfg, SiteStats(freqs=freqs)
    )


def _error(mod, w) -> float:
    return float(((mod.weight().detach() - w) ** 2).sum())


@pytest.mark.parametrize("role", ["embedding", "softmax"])
@pytest.mark.parametrize("knobs", [{}, {"rows": 8, "cols": 12}, {"rows": 5}, {"cols": 30}])
def test_allocation_is_a_bijection_onto_distinct_cells(role, knobs):
    mod = _build(role, **knobs)
    assert mod.rows * mod.cols >= V
    assert int(mod.row_of.max()) < mod.rows and int(mod.col_of.max()) < mod.cols
    assert len(set(zip(mod.row_of.tolist(), mod.col_of.tolist()))) == V


def test_default_grid_is_square_root():
    assert _build().rows == 10 and _build().cols == 10
    with pytest.raises(UserError, match="lightrnn.*rows=2.*cols=2"):
        _build(rows=2, cols=2)


@pytest.mark.parametrize("knobs,full", [({}, False), ({"rows": 8, "cols": 12}, True)])
def test_softmax_log_probs_are_normalised(knobs, full):
    mod = _build(freqs=1000.0 / torch.arange(1, V + 1), **knobs)
    with torch.no_grad():
        mod.U.normal_()  # a trained row conditioning must keep the normalisation
        mod.b_c.normal_()
    lse = torch.logsumexp(mod.matmul(torch.randn(3, 5, D)), -1)
    assert (lse <= 1e-5).all()
    if full:  # every cell holds a word: the V log-probabilities sum to one
        torch.testing.assert_close(lse, torch.zeros_like(lse), atol=1e-5, rtol=0)


def test_low_bit_tables_stay_finite():
    # U starts at 0 and b_r, b_c are constant without word counts: constant rows must quantise.
    mod = _build(bits=4)
    assert torch.isfinite(mod.matmul(torch.randn(3, D))).all()
    back = LightRNNWeight.from_export(mod.export(), mod.site, mod.config)
    torch.testing.assert_close(back.matmul(torch.ones(2, D)), mod.matmul(torch.ones(2, D)))


def test_softmax_ignores_the_site_bias_and_embedding_keeps_it():
    soft, emb = _build("softmax"), _build("embedding")
    assert CompressedLinear(soft, torch.ones(V)).bias is None  # LightRNN carries its own b_r, b_c
    assert emb.uses_site_bias
    x = torch.randn(4, D)
    torch.testing.assert_close(emb.matmul(x), x @ emb.weight().T, atol=1e-5, rtol=1e-5)


def test_full_grid_without_row_conditioning_is_the_linearised_softmax():
    mod = _build(rows=8, cols=12)
    x = torch.randn(6, D)
    bias = mod.b_r[mod.row_of] + mod.b_c[mod.col_of]
    torch.testing.assert_close(mod.matmul(x), torch.log_softmax(x @ mod.weight().T + bias, -1), atol=1e-5, rtol=1e-5)


def test_init_recovers_a_planted_table_better_than_a_random_allocation():
    g = torch.Generator().manual_seed(1)
    cells = torch.randperm(100, generator=g)[:V]
    w = torch.randn(10, D, generator=g)[cells // 10] * 2 + torch.randn(10, D, generator=g)[cells % 10]
    mod = _build("embedding", w=w)
    random_alloc = torch.randperm(100, generator=g)[:V]
    with torch.no_grad():  # the same tables under a scrambled allocation
        mod.row_of.copy_(random_alloc // 10), mod.col_of.copy_(random_alloc % 10)
        scrambled = _error(mod, w)
    assert _error(_build("embedding", w=w), w) < 0.1 * scrambled


@pytest.mark.parametrize("role", ["embedding", "softmax"])
def test_reconstruction_costs_decompose_the_error_exactly(role):
    mod, w = _build(role), _target(seed=2)
    row, col, cell = mod.reconstruction_costs(w)
    words = torch.arange(V)
    total = row[words, mod.row_of] + col[words, mod.col_of] + cell[mod.row_of, mod.col_of]
    torch.testing.assert_close(total.sum().item(), _error(mod, w), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("role", ["embedding", "softmax"])
def test_reallocation_with_true_costs_does_not_increase_the_error(role):
    mod, w = _build(role), _target(seed=3)  # fit to one matrix, reallocate towards another
    before = _error(mod, w)
    for _ in range(3):
        mod.reallocate(*mod.reconstruction_costs(w))
        after = _error(mod, w)
        assert after <= before + 1e-4
        before = after
    assert len(set(zip(mod.row_of.tolist(), mod.col_of.tolist()))) == V


def test_reallocation_lowers_or_keeps_the_given_cost():
    mod = _build()
    g = torch.Generator().manual_seed(4)
    words = torch.arange(V)
    for _ in range(5):
        row_cost, col_cost = torch.rand(V, mod.rows, generator=g), torch.rand(V, mod.cols, generator=g)
        before, after = mod.reallocate(row_cost, col_cost)
        assert after <= before
        now = row_cost[words, mod.row_of].sum() + col_cost[words, mod.col_of].sum()
        assert float(now) == pytest.approx(after)
    # Costs that favour the current cells leave the table as it is.
    rows, cols = mod.row_of.clone(), mod.col_of.clone()
    mod.reallocate(
        1 - torch.nn.functional.one_hot(rows, mod.rows).float(), 1 - torch.nn.functional.one_hot(cols, mod.cols).float()
    )
    assert torch.equal(mod.row_of, rows) and torch.equal(mod.col_of, cols)


def test_nll_costs_add_up_to_the_model_loss_and_reallocation_keeps_its_cost():
    mod = _build()
    x, targets = torch.randn(200, D), torch.randint(0, V, (200,))
    row_cost, col_cost = mod.nll_costs(x, targets)
    assert row_cost.shape == (V, mod.rows) and col_cost.shape == (V, mod.cols)
    words = torch.arange(V)
    nll = -mod.matmul(x)[torch.arange(200), targets].sum()
    charged = row_cost[words, mod.row_of].sum() + col_cost[words, mod.col_of].sum()
    torch.testing.assert_close(charged, nll.detach(), rtol=1e-4, atol=1e-3)
    before, after = mod.reallocate(row_cost, col_cost)
    assert after <= before


def test_greedy_matching_respects_capacities():
    g = torch.Generator().manual_seed(5)
    cost = torch.rand(50, 7, generator=g)
    capacity = torch.tensor([10, 0, 3, 12, 5, 9, 11])
    out = greedy_assign(cost, capacity)
    assert (torch.bincount(out, minlength=7) <= capacity).all()
    # Within groups: each group's items take distinct bins.
    group = torch.randint(0, 5, (30,), generator=g)
    cost = torch.rand(30, 8, generator=g)
    out = greedy_assign(cost, torch.ones(5, 8, dtype=torch.long), group=group)
    assert len(set(zip(group.tolist(), out.tolist()))) == 30
    # A clear favourite per item is honoured when there is room.
    assert torch.equal(greedy_assign(1 - torch.eye(6), torch.ones(6, dtype=torch.long)), torch.arange(6))
    with pytest.raises(ValueError):
        greedy_assign(torch.rand(5, 2), torch.tensor([2, 2]))


@pytest.mark.parametrize("role", ["embedding", "softmax"])
def test_allocation_is_bit_packed(role):
    mod = _build(role, rows=12, cols=8, bits=8)
    exported = mod.export()
    assert exported["row_of"].numel() == 48 and exported["col_of"].numel() == 36  # 96 x 4 and 96 x 3 bits
    assert tensors_bytes(exported) == LightRNNWeight.stored_bytes(mod.site, mod.config)
    with torch.no_grad():  # a reallocated table round-trips too
        mod.reallocate(torch.rand(V, 12), torch.rand(V, 8))
    back = LightRNNWeight.from_export(mod.export(), mod.site, mod.config)
    assert torch.equal(back.row_of, mod.row_of) and torch.equal(back.col_of, mod.col_of)
