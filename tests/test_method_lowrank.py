"""lowrank: truncated-SVD init with sqrt(S) split, rank clipping, skinny forward (docs/methods.md, Low-rank)."""

from __future__ import annotations

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods import config_from_dict
from autoshrink.methods.lowrank import LowRankConfig, LowRankWeight
from autoshrink.methods._storage import tensors_bytes
from autoshrink.sites import Site

M, N = 40, 24


def _w(seed: int = 0) -> torch.Tensor:
    return torch.randn(M, N, generator=torch.Generator().manual_seed(seed))


def _build(**knobs) -> LowRankWeight:
    cfg = LowRankConfig(**knobs)
    return LowRankWeight.build(_w(), Site("s", "linear", (M, N)), cfg)


def test_init_error_is_the_eckart_young_optimum():
    w = _w()
    s = torch.linalg.svdvals(w)
    for r in (1, 5, 12):
        err = (w - _build(rank=r).weight()).pow(2).sum()
        torch.testing.assert_close(err, s[r:].pow(2).sum(), rtol=1e-4, atol=1e-4)


def test_sqrt_sigma_is_split_evenly_between_the_factors():
    mod = _build(rank=8)
    s = torch.linalg.svdvals(_w())[:8]
    # Column k of U and row k of V both have norm sqrt(s_k): neither factor carries all of S.
    torch.testing.assert_close(mod.u.norm(dim=0), s.sqrt(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mod.v.norm(dim=1), s.sqrt(), rtol=1e-4, atol=1e-5)


def test_rank_is_clipped_to_the_matrix_and_then_exact():
    mod = _build(rank=1000)
    assert mod.u.shape == (M, N) and mod.v.shape == (N, N)
    torch.testing.assert_close(mod.weight(), _w(), atol=1e-4, rtol=1e-4)
    site = Site("s", "linear", (M, N))
    assert LowRankWeight.stored_bytes(site, LowRankConfig(rank=1000)) == 4 * (M * N + N * N)


def test_stored_bytes_count_codes_and_per_row_scales():
    cfg = LowRankConfig(rank=4, bits=8)
    site = Site("s", "linear", (M, N))
    # 8-bit codes of U (M x 4) and V (4 x N), plus an fp16 scale and minimum per row.
    expected = M * 4 + 4 * N + 4 * (M + 4)
    assert LowRankWeight.stored_bytes(site, cfg) == expected
    assert tensors_bytes(_build(rank=4, bits=8).export()) == expected


@pytest.mark.parametrize("bits,group_size", [(32, 0), (4, 0), (3, 8)])
def test_forward_paths_agree_with_the_stored_weight(bits, group_size):
    mod = _build(rank=6, bits=bits, group_size=group_size)
    w = mod.weight()
    x = torch.randn(2, 3, N)
    torch.testing.assert_close(mod.matmul(x), x @ w.T, atol=1e-4, rtol=1e-4)
    ids = torch.tensor([[0, 5, 39], [7, 7, 1]])
    # lookup quantises only the gathered rows; per-row codes make that identical to all of U.
    torch.testing.assert_close(mod.lookup(ids), w[ids], atol=1e-5, rtol=1e-5)


def test_forward_never_forms_the_dense_matrix(monkeypatch):
    mod = _build(rank=4)
    monkeypatch.setattr(mod, "weight", lambda: pytest.fail("matmul/lookup formed W"))
    assert mod.matmul(torch.randn(3, N)).shape == (3, M)
    assert mod.lookup(torch.tensor([1, 2])).shape == (2, N)


@pytest.mark.parametrize("rank", [-1, -3])
def test_bad_rank_names_the_method_and_value(rank):
    with pytest.raises(UserError, match=rf"lowrank.*{rank}"):
        config_from_dict({"method": "lowrank", "rank": rank})


VOCAB, DIM = 96, 16  # a vocabulary-like site: many rows, few columns


def _vocab_build(role: str = "softmax", **knobs) -> tuple[LowRankWeight, torch.Tensor, Site]:
    from autoshrink.sites import SiteStats

    g = torch.Generator().manual_seed(1)
    w = (torch.randn(VOCAB, 3, generator=g) @ torch.randn(3, DIM, generator=g)) / 4 + 0.1 * torch.randn(
        VOCAB, DIM, generator=g
    )
    site = Site("toy", role, (VOCAB, DIM), bias=role != "embedding")
    x = torch.randn(256, DIM, generator=g)
    freqs = 1000.0 / torch.arange(1, VOCAB + 1, dtype=torch.float64)
    stats = SiteStats(moment=(x.T @ x / 256).double(), tokens=256, freqs=freqs)
    cfg = LowRankConfig(**knobs)
    return LowRankWeight.build(w, site, cfg, stats), w, site


def test_u_stored_transposed_pays_a_scale_per_group_of_rows_not_per_row():
    rows = LowRankConfig(rank=2, bits=4)
    columns = LowRankConfig(rank=2, bits=4, u_groups=32)
    site = Site("toy", "softmax", (VOCAB, DIM))
    codes = (VOCAB * 2 * 4 + 7) // 8 + 2 * DIM * 4 // 8
    # per row: an fp16 scale and minimum for each of U's 96 rows and V's 2 rows
    assert LowRankWeight.stored_bytes(site, rows) == codes + 4 * (VOCAB + 2)
    # transposed: one per 32 rows of each of U's 2 columns, and V's 2 rows as before
    assert LowRankWeight.stored_bytes(site, columns) == codes + 4 * (2 * 3 + 2)
    mod, _, _ = _vocab_build(rank=2, bits=4, u_groups=32)
    assert tensors_bytes(mod.export()) == LowRankWeight.stored_bytes(site, columns)


@pytest.mark.parametrize("role", ["embedding", "softmax"])
def test_u_stored_transposed_forward_lookup_and_export_agree(role):
    mod, _, site = _vocab_build(role, rank=4, bits=3, u_groups=32)
    w = mod.weight()
    x = torch.randn(5, DIM)
    torch.testing.assert_close(mod.matmul(x), x @ w.T, atol=1e-5, rtol=1e-5)
    ids = torch.tensor([[0, 5, 95], [40, 40, 1]])
    torch.testing.assert_close(mod.lookup(ids), w[ids], atol=1e-6, rtol=1e-6)
    back = LowRankWeight.from_export(mod.export(), site, mod.config)
    torch.testing.assert_close(back.weight(), w, atol=1e-6, rtol=1e-6)
    # the groups run down U's columns: 32 consecutive rows of a column share one grid of 8 levels
    stored = mod.stored_u()
    assert all(len(torch.unique(stored[k : k + 32, c])) <= 8 for k in range(0, VOCAB, 32) for c in range(4))


def test_u_stored_transposed_is_gptq_rounded_onto_its_own_grid():
    """The data-aware build rounds U column by column (GPTQ on the moment of V x): what it
    trains from is exactly what it stores, and the rounding beats rounding to nearest."""
    from autoshrink.methods._storage import stored_values

    mod, w, _ = _vocab_build("softmax", rank=4, bits=3, u_groups=32)
    torch.testing.assert_close(mod.stored_u(), mod.u.detach(), atol=1e-6, rtol=0)
    plain, _, _ = _vocab_build("softmax", rank=4, bits=32)
    nearest = stored_values(plain.u.detach().T.contiguous(), 3, 32).T @ stored_values(plain.v.detach(), 3)
    x = torch.randn(512, DIM, generator=torch.Generator().manual_seed(1))  # the calibration inputs' law
    err = lambda w_hat: float(((w - w_hat) @ x.T).pow(2).mean())  # noqa: E731
    assert err(mod.weight().detach()) < err(nearest)


def test_bad_u_groups_is_one_clear_error():
    with pytest.raises(UserError, match=r"lowrank.*u_groups"):
        config_from_dict({"method": "lowrank", "u_groups": -1})


def _gated_weight() -> torch.Tensor:
    """Four 10-row gate blocks; the last holds rank-8 content ten times larger, the rest rank 1."""
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(10, 1, generator=g) @ torch.randn(1, N, generator=g) for _ in range(3)]
    blocks.append(10 * torch.randn(10, 8, generator=g) @ torch.randn(8, N, generator=g))
    return torch.cat(blocks)


def test_gates_spend_the_total_rank_where_the_blocks_energy_is():
    site = Site("rnn.0.hh", "recurrent", (M, N))
    w = _gated_weight()
    gated = LowRankWeight.build(w, site, LowRankConfig(rank=11, u_groups=5, gates=4))
    assert gated.split == [1, 1, 1, 8]  # each block's content exactly: a rank-1 block needs no more
    assert torch.allclose(gated.weight(), w, atol=1e-4)
    # One factorisation of the same parameters (rank 11 x (10 + 24) = rank 5 x (40 + 24), about) cannot.
    joint = LowRankWeight.build(w, site, LowRankConfig(rank=11 * (10 + N) // (M + N)))
    assert joint.nbytes() <= gated.nbytes() - 4 * 2  # the split's four int16 aside
    assert (joint.weight() - w).norm() > 0.1 * w.norm()


def test_a_checkpoint_restores_the_gate_split_into_a_module_built_with_another():
    site = Site("rnn.0.hh", "recurrent", (M, N))
    cfg = LowRankConfig(rank=11, u_groups=5, gates=4)
    trained = LowRankWeight.build(_gated_weight(), site, cfg)
    other = LowRankWeight.build(_w(), site, cfg)  # a resume compresses afresh, then loads the checkpoint
    assert other.split != trained.split
    other.load_state_dict(trained.state_dict())
    assert other.split == trained.split and torch.equal(other.weight(), trained.weight())


@pytest.mark.parametrize(
    "knobs,site,message",
    [
        ({"rank": 8, "gates": 3, "u_groups": 4}, Site("rnn.0.hh", "recurrent", (M, N)), "split into equal blocks"),
        ({"rank": 8, "gates": 4, "u_groups": 4}, Site("decoder", "softmax", (M, N)), "not to vocabulary site"),
    ],
)
def test_gates_refuse_what_they_cannot_split_in_one_line(knobs, site, message):
    with pytest.raises(UserError, match=message) as e:
        LowRankWeight.build(_w(), site, LowRankConfig(**knobs))
    assert "\n" not in str(e.value)


def test_one_gate_is_refused_for_one_factorisation_has_one_spelling():
    with pytest.raises(UserError, match="gates=1 is one factorisation"):
        LowRankConfig(rank=8, gates=1)


def test_a_plan_without_gates_is_written_as_before_gates_existed():
    """`gates` came later: at its default a config writes the dict older plans hold (the same plan
    for twins, profile rows and studies; older code reads it), and writes it when set."""
    before = {"method": "lowrank", "bits": 4, "group_size": 0, "init": "data", "rank": 8, "u_groups": 128}
    assert config_from_dict(before).to_dict() == before
    gated = config_from_dict({**before, "gates": 4})
    assert gated.to_dict() == {**before, "gates": 4} and gated.gates == 4
