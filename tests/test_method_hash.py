"""Slim embeddings (`hash`): the fixed random map, its regeneration from the seed, and the forward."""

from __future__ import annotations

import copy

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods import config_from_dict, weight_class
from autoshrink.methods.hash import HashWeight, slim_map
from autoshrink.methods._storage import tensors_bytes
from autoshrink.sites import Site

V, D = 96, 16


def _build(role="softmax", w=None, **knobs) -> HashWeight:
    cfg = config_from_dict({"method": "hash", **knobs})
    w = torch.randn(V, D, generator=torch.Generator().manual_seed(0)) if w is None else w
    return weight_class(cfg).build(w, Site(f"toy.{role}", role, (V, D)), cfg)


@pytest.mark.parametrize("words,chunks,pool", [(96, 4, 64), (96, 4, 100), (7, 3, 5), (10, 2, 20)])
def test_map_is_balanced(words, chunks, pool):
    counts = torch.bincount(slim_map(words, chunks, pool, seed=3).reshape(-1), minlength=pool)
    assert counts.max() - counts.min() <= 1  # every pool vector is used about equally
    assert counts.sum() == words * chunks


def test_map_depends_only_on_the_seed():
    a, b = _build(chunks=4, pool=64, seed=5), _build(chunks=4, pool=64, seed=5)
    assert torch.equal(a.map, b.map)
    assert not torch.equal(a.map, _build(chunks=4, pool=64, seed=6).map)


def test_export_stores_the_seed_and_import_regenerates_the_map():
    mod = _build(chunks=4, pool=64, seed=11, bits=6)
    exported = mod.export()
    assert exported["seed"].dtype == torch.int64 and int(exported["seed"][0]) == 11
    assert "map" not in mod.state_dict()  # the map is never stored, only regenerated
    back = HashWeight.from_export(exported, mod.site, mod.config)
    assert torch.equal(back.map, mod.map)
    torch.testing.assert_close(back.weight(), mod.weight())


def test_init_is_the_least_squares_fit_for_the_fixed_map():
    w = torch.randn(V, D)
    mod = _build(w=w, chunks=4, pool=50)
    sub = w.reshape(V * 4, D // 4)
    flat = mod.map.reshape(-1)
    for j in (0, 17, 49):  # each pool vector is the mean of the sub-vectors mapped to it
        torch.testing.assert_close(mod.pool[j], sub[flat == j].mean(0))
    # A permutation map (M = K V) reconstructs exactly.
    torch.testing.assert_close(_build(w=w, chunks=4, pool=4 * V).weight(), w)


@pytest.mark.parametrize("bits", [32, 4])
def test_matmul_and_lookup_agree_with_weight(bits):
    mod = _build(chunks=4, pool=64, bits=bits, group_size=2)
    x = torch.randn(2, 3, D)
    torch.testing.assert_close(mod.matmul(x), x @ mod.weight().T, atol=1e-5, rtol=1e-5)
    ids = torch.tensor([[0, 5, 95], [3, 3, 7]])
    torch.testing.assert_close(mod.lookup(ids), mod.weight()[ids])


def test_matmul_gather_fallback_for_other_dtypes():
    mod = _build(chunks=4, pool=64)
    x = torch.randn(5, D)
    half = copy.deepcopy(mod).to(torch.bfloat16)  # deepcopy works: no sparse buffer is held
    torch.testing.assert_close(half.matmul(x.bfloat16()).float(), mod.matmul(x), atol=0.1, rtol=0.05)


def test_matmul_gradient_matches_the_dense_product():
    mod = _build(chunks=2, pool=40)
    x = torch.randn(4, D)
    (mod.matmul(x) ** 2).sum().backward()
    fast = mod.pool.grad.clone()
    mod.pool.grad = None
    ((x @ mod.weight().T) ** 2).sum().backward()
    torch.testing.assert_close(fast, mod.pool.grad, atol=1e-4, rtol=1e-4)


def test_pool_is_clipped_and_counted():
    cfg = config_from_dict({"method": "hash", "chunks": 2, "pool": 10**6, "bits": 8})
    site = Site("toy.embedding", "embedding", (V, D))
    assert cfg.pool_size(site) == 2 * V
    mod = weight_class(cfg).build(torch.randn(V, D), site, cfg)
    assert HashWeight.stored_bytes(site, cfg) == tensors_bytes(mod.export())


def test_chunks_must_divide_the_row_dimension():
    with pytest.raises(UserError, match="hash.*chunks=5.*16"):
        _build(chunks=5)
    with pytest.raises(UserError, match="hash"):
        config_from_dict({"method": "hash", "seed": -1})
