"""GroupReduce-specific properties (docs/methods.md, GroupReduce): rank allocation, weighted SVD,
frequency blocks, refinement by swaps, the permutation path and its exact byte count."""

from __future__ import annotations

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods._storage import tensors_bytes
from autoshrink.methods.groupreduce import GroupReduceConfig, GroupReduceWeight
from autoshrink.sites import Site, SiteStats

V, D = 96, 16


def _site(role: str = "softmax", v: int = V, d: int = D) -> Site:
    return Site(name=f"toy.{role}", role=role, shape=(v, d))


def _dense(v: int = V, d: int = D, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, 4, generator=g) @ torch.randn(4, d, generator=g) + 0.3 * torch.randn(v, d, generator=g)


def _shuffled_zipf(v: int = V, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (1000.0 / torch.arange(1, v + 1, dtype=torch.float32))[torch.randperm(v, generator=g)]


def _weighted_error(mod: GroupReduceWeight, w: torch.Tensor, f: torch.Tensor) -> float:
    return float((f * ((mod.weight().detach() - w) ** 2).sum(1)).sum())


def test_rank_allocation_rule():
    # Block means 8, 4, 2, 1 (4 words each): ranks r_min * 8, 4, 2, 1 capped at min(|V_i|, D) = 4.
    f = torch.tensor([8.0] * 4 + [4.0] * 4 + [2.0] * 4 + [1.0] * 4)
    site = _site(v=16, d=D)
    blocks = GroupReduceWeight.allocation(site, GroupReduceConfig(blocks=4, rank=1), f)
    assert [b.rank for b in blocks] == [4, 4, 2, 1]
    assert [b.size for b in blocks] == [4, 4, 4, 4]
    # r >= D n / (n + D) = 3.2 costs at least the dense rows: stored dense.
    assert [b.dense for b in blocks] == [True, True, False, False]
    # Counts only matter through their ratios, and unsorted counts give the same blocks.
    again = GroupReduceWeight.allocation(site, GroupReduceConfig(blocks=4, rank=1), 3 * f.flip(0))
    assert again == blocks


def test_uneven_blocks_and_rarest_block_gets_r_min():
    site = _site(v=10, d=64)
    blocks = GroupReduceWeight.allocation(site, GroupReduceConfig(blocks=3, rank=2), torch.ones(10))
    assert [b.size for b in blocks] == [4, 3, 3]
    assert [b.rank for b in blocks] == [2, 2, 2]  # uniform counts: every block is the rarest


def test_weighted_svd_beats_unweighted_on_weighted_error():
    # One block, so the weights decide the shared basis alone.
    site, w, f = _site(), _dense(), _shuffled_zipf()
    weighted = GroupReduceWeight.build(w, site, GroupReduceConfig(blocks=1, rank=2, alpha=1.0), SiteStats(freqs=f))
    plain = GroupReduceWeight.build(w, site, GroupReduceConfig(blocks=1, rank=2, alpha=0.0), SiteStats(freqs=f))
    assert _weighted_error(weighted, w, f) < 0.9 * _weighted_error(plain, w, f)
    # alpha changes the fit, never the bytes.
    assert tensors_bytes(weighted.export()) == tensors_bytes(plain.export())


def test_blocks_follow_frequency_order():
    site, f = _site(), _shuffled_zipf()
    mod = GroupReduceWeight.build(_dense(), site, GroupReduceConfig(blocks=4, rank=2), SiteStats(freqs=f))
    assert mod.permuted
    first = set(mod.order[:24].tolist())
    assert first == set(torch.topk(f, 24).indices.tolist())
    # The rarest block holds the rarest words.
    assert set(mod.order[-24:].tolist()) == set(torch.topk(f, 24, largest=False).indices.tolist())


def test_sorted_freqs_store_no_permutation():
    site = _site()
    f = 1000.0 / torch.arange(1, V + 1, dtype=torch.float32)
    mod = GroupReduceWeight.build(_dense(), site, GroupReduceConfig(blocks=4, rank=2), SiteStats(freqs=f))
    assert "perm" not in mod.export()
    assert GroupReduceWeight.stored_bytes(site, mod.config, f) == GroupReduceWeight.stored_bytes(site, mod.config)


def _two_subspace_rows(v: int = 64, d: int = D, seed: int = 0) -> torch.Tensor:
    """Rows from two rank-2 subspaces, mixed 20/12 in the first half and 12/20 in the second."""
    g = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(d, 2, generator=g))[0].T for _ in range(2)]
    kinds = [0] * 20 + [1] * 12 + [1] * 20 + [0] * 12
    return torch.stack([torch.randn(2, generator=g) @ bases[k] for k in kinds])


def test_refinement_lowers_weighted_error_and_keeps_bytes():
    w = _two_subspace_rows()
    site, f = _site(v=64), torch.ones(64)
    base = GroupReduceWeight.build(w, site, GroupReduceConfig(blocks=2, rank=2), SiteStats(freqs=f))
    refined = GroupReduceWeight.build(w, site, GroupReduceConfig(blocks=2, rank=2, refine=10), SiteStats(freqs=f))
    before, after = _weighted_error(base, w, f), _weighted_error(refined, w, f)
    assert after <= before
    assert after < 1e-6 * before  # swapping separates the two subspaces exactly
    cfg = refined.config
    # Sizes never change, so the bytes are the analytic count, the permutation included.
    assert tensors_bytes(refined.export()) == GroupReduceWeight.stored_bytes(site, cfg, f)
    assert tensors_bytes(refined.export()) == tensors_bytes(base.export()) + 64 * 6 // 8


def test_refinement_never_increases_error_on_random_rows():
    site, w, f = _site(), _dense(), _shuffled_zipf()
    errors = [
        _weighted_error(
            GroupReduceWeight.build(w, site, GroupReduceConfig(blocks=4, rank=2, refine=t), SiteStats(freqs=f)), w, f
        )
        for t in (0, 1, 3)
    ]
    assert errors[1] <= errors[0] * (1 + 1e-6) and errors[2] <= errors[1] * (1 + 1e-6)


@pytest.mark.parametrize("refine,bits", [(0, 32), (2, 6)])
def test_matmul_and_lookup_with_unsorted_freqs(refine, bits):
    site, w, f = _site(), _dense(), _shuffled_zipf()
    mod = GroupReduceWeight.build(
        w, site, GroupReduceConfig(blocks=4, rank=2, refine=refine, bits=bits), SiteStats(freqs=f)
    )
    x = torch.randn(2, 3, D)
    torch.testing.assert_close(mod.matmul(x), x @ mod.weight().T, atol=1e-4, rtol=1e-4)
    ids = torch.randint(0, V, (5, 7))
    torch.testing.assert_close(mod.lookup(ids), mod.weight()[ids], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits,group_size", [(32, 0), (16, 0), (4, 0), (6, 8)])
def test_stored_bytes_with_freqs_equals_export(bits, group_size):
    site, f = _site(), _shuffled_zipf()
    cfg = GroupReduceConfig(blocks=4, rank=2, bits=bits, group_size=group_size)
    mod = GroupReduceWeight.build(_dense(), site, cfg, SiteStats(freqs=f))
    assert GroupReduceWeight.stored_bytes(site, cfg, f) == tensors_bytes(mod.export())
    # Without the counts the analytic count assumes frequency order: no permutation.
    assert GroupReduceWeight.stored_bytes(site, cfg) == tensors_bytes(mod.export()) - V * 7 // 8
    back = GroupReduceWeight.from_export(mod.export(), site, cfg)
    torch.testing.assert_close(back.weight(), mod.weight(), atol=1e-5, rtol=1e-5)


def test_unknown_counts_use_the_zipf_prior_consistently():
    site = _site()
    cfg = GroupReduceConfig(blocks=4, rank=2)
    mod = GroupReduceWeight.build(_dense(), site, cfg)
    assert [b.rank for b in mod.blocks] == [16, 4, 2, 2]
    assert tensors_bytes(mod.export()) == GroupReduceWeight.stored_bytes(site, cfg)


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="alpha"):
        GroupReduceConfig(alpha=2.5)
    with pytest.raises(UserError, match="blocks"):
        GroupReduceWeight.build(torch.zeros(4, D), _site(v=4), GroupReduceConfig(blocks=5))
    with pytest.raises(UserError, match="word counts"):
        GroupReduceWeight.build(_dense(), _site(), GroupReduceConfig(), SiteStats(freqs=torch.ones(V - 1)))


@pytest.mark.parametrize("role", ["embedding", "softmax"])
def test_blocks_with_u_stored_transposed_forward_lookup_and_export_agree(role):
    """u_groups stores each block's U transposed: a scale per group of its words in each column
    (not one per word), the export is that many bytes and reproduces the trained weight."""
    site = Site(name=f"toy.{role}", role=role, shape=(V, D), bias=role != "embedding")
    f = _shuffled_zipf()
    x = torch.randn(128, D, generator=torch.Generator().manual_seed(2))
    stats = SiteStats(moment=(x.T @ x / 128).double(), tokens=128, freqs=f) if role == "softmax" else SiteStats(freqs=f)
    rows = GroupReduceConfig(blocks=3, rank=2, bits=4)
    columns = GroupReduceConfig(blocks=3, rank=2, bits=4, u_groups=16)
    mod = GroupReduceWeight.build(_dense(), site, columns, stats)
    assert tensors_bytes(mod.export()) == GroupReduceWeight.stored_bytes(site, columns, f)
    saved = sum(b.size - b.rank * -(-b.size // 16) for b in mod.blocks if not b.dense)  # scales: per word -> per group
    assert GroupReduceWeight.stored_bytes(site, rows, f) - GroupReduceWeight.stored_bytes(site, columns, f) == 4 * saved
    w = mod.weight()
    torch.testing.assert_close(mod.matmul(x[:3]), x[:3] @ w.T, atol=1e-5, rtol=1e-5)
    ids = torch.tensor([[0, 5, 95], [40, 40, 1]])
    torch.testing.assert_close(mod.lookup(ids), w[ids], atol=1e-6, rtol=1e-6)
    back = GroupReduceWeight.from_export(mod.export(), site, columns)
    torch.testing.assert_close(back.weight(), w, atol=1e-6, rtol=1e-6)
    for i, b in enumerate(mod.blocks):  # GPTQ rounded each U column by column onto its own grids
        if not b.dense:
            torch.testing.assert_close(mod._block(i)[0], mod.factors[f"b{i}_U"].detach(), atol=1e-6, rtol=0)
