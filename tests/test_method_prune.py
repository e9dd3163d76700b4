"""Magnitude pruning: exact counts, the cubic ramp, revival, sparse format choice (docs/methods.md, Pruning)."""

from __future__ import annotations

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods import config_from_dict, weight_class
from autoshrink.methods._storage import bitmask_bytes, csr_index_bytes, sparse_bytes, tensors_bytes
from autoshrink.methods._sparse import RAMP_END, cubic_density, topk_mask
from autoshrink.sites import Site

SITE = Site(name="toy.rec", role="recurrent", shape=(40, 30))


def _build(w=None, site=SITE, **knobs):
    cfg = config_from_dict({"method": "prune", **knobs})
    if w is None:
        w = torch.randn(site.shape, generator=torch.Generator().manual_seed(0))
    return weight_class(cfg).build(w, site, cfg), w, cfg


def test_build_keeps_exactly_k_largest_magnitudes():
    mod, w, _ = _build(density=0.1)
    k = round(0.1 * 40 * 30)
    assert int(mod.mask.sum()) == k
    assert w.abs()[mod.mask].min() >= w.abs()[~mod.mask].max()
    # a density that rounds to 0 still keeps one weight
    tiny, _, _ = _build(density=1e-5)
    assert int(tiny.mask.sum()) == 1


def test_ties_are_broken_by_position_so_the_count_is_exact():
    w = torch.ones(40, 30)
    mod, _, _ = _build(w, density=0.25)
    mod.on_progress(1.0)
    assert int(mod.mask.sum()) == 300
    assert mod.mask.reshape(-1)[:300].all()  # row-major first entries win
    assert int(topk_mask(torch.zeros(5, 5), 7).sum()) == 7


def test_cubic_schedule_is_dense_at_start_and_holds_target_after_ramp():
    assert cubic_density(0.0, 1.0, 0.1) == pytest.approx(1.0)
    assert cubic_density(RAMP_END / 2, 1.0, 0.1) == pytest.approx(0.1 + 0.9 / 8)
    assert cubic_density(RAMP_END, 1.0, 0.1) == pytest.approx(0.1)
    assert cubic_density(1.0, 1.0, 0.1) == pytest.approx(0.1)


def test_ramp_is_monotone_and_ends_at_exactly_k():
    mod, _, _ = _build(density=0.2)
    counts = []
    for step in range(101):
        mod.on_progress(step / 100)
        counts.append(int(mod.mask.sum()))
    assert counts[0] == 40 * 30  # fine-tuning starts dense
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[-1] == round(0.2 * 40 * 30)
    assert counts[int(RAMP_END * 100)] == counts[-1]


def test_pruned_weights_keep_their_values_and_revive():
    mod, w, _ = _build(density=0.1)
    mod.on_progress(0.5)
    pruned = (~mod.mask).nonzero()[0]
    i, j = int(pruned[0]), int(pruned[1])
    assert mod.w[i, j] == w[i, j]  # kept in the parameter, only masked
    with torch.no_grad():
        mod.w[i, j] = 100.0  # its magnitude grows past every kept weight
    mod.on_progress(0.6)
    assert mod.mask[i, j]
    mod.on_progress(1.0)
    assert mod.mask[i, j] and int(mod.mask.sum()) == 120


def test_sparse_format_is_the_cheaper_one():
    site = Site(name="toy.big", role="linear", shape=(400, 300))  # row pointers dwarf a tiny matrix
    m, n = site.shape
    low, _, _ = _build(site=site, density=0.02)
    high, _, _ = _build(site=site, density=0.5)
    low_t, high_t = low.export(), high.export()
    assert "row_ptr" in low_t and "bitmask" not in low_t
    assert "bitmask" in high_t and "row_ptr" not in high_t
    k_low, k_high = round(0.02 * m * n), round(0.5 * m * n)
    assert csr_index_bytes(m, n, k_low) < bitmask_bytes(m, n) and csr_index_bytes(m, n, k_high) > bitmask_bytes(m, n)
    assert tensors_bytes(low_t) == sparse_bytes(m, n, k_low, 32) == 4 * k_low + csr_index_bytes(m, n, k_low)
    assert tensors_bytes(high_t) == sparse_bytes(m, n, k_high, 32) == 4 * k_high + bitmask_bytes(m, n)


def test_a_kept_exact_zero_is_stored_by_its_mask():
    w = torch.randn(40, 30)
    w[:, :10] = 0.0  # 400 zeros; density 0.9 keeps 1080, so 280 kept weights are exactly 0
    mod, _, cfg = _build(w, density=0.9)
    back = type(mod).from_export(mod.export(), SITE, cfg)
    assert int(back.mask.sum()) == 1080
    assert type(mod).stored_bytes(SITE, cfg) == tensors_bytes(back.export())


def test_export_mid_ramp_is_at_the_target_density():
    mod, _, cfg = _build(density=0.1, bits=8)
    mod.on_progress(0.2)
    assert int(mod.mask.sum()) > 120
    assert tensors_bytes(mod.export()) == type(mod).stored_bytes(SITE, cfg)


@pytest.mark.parametrize("bits", [32, 16, 4])
def test_inference_and_lookup_agree_with_the_stored_weight(bits):
    mod, _, cfg = _build(density=0.05, bits=bits, group_size=8)
    x = torch.randn(2, 3, 30)
    with torch.no_grad():
        mod.eval()
        y_eval = mod.matmul(x)  # cached CSR path on CPU at this density
        assert mod._product._csr is not None
    torch.testing.assert_close(y_eval, x @ mod.weight().T, atol=1e-5, rtol=1e-5)
    ids = torch.tensor([[0, 5, 39], [7, 7, 1]])
    torch.testing.assert_close(mod.lookup(ids), mod.weight()[ids])
    back = type(mod).from_export(mod.export(), SITE, cfg)
    torch.testing.assert_close(back.weight(), mod.weight())


def test_the_csr_cache_follows_weight_updates():
    mod, _, _ = _build(density=0.05)
    x = torch.randn(4, 30)
    with torch.no_grad():
        before = mod.matmul(x)
        mod.w.mul_(2.0)  # an optimizer step is an in-place update too
        torch.testing.assert_close(mod.matmul(x), 2 * before)


@pytest.mark.parametrize("density", [0.0, -0.1, 1.01])
def test_bad_density_names_the_method(density):
    with pytest.raises(UserError, match="prune"):
        config_from_dict({"method": "prune", "density": density})


def test_a_module_with_a_cached_csr_can_be_copied():
    import copy

    mod, _, _ = _build(density=0.05)
    x = torch.randn(2, 30)
    with torch.no_grad():
        y = mod.eval().matmul(x)  # fills the CSR cache, which torch cannot deepcopy
        torch.testing.assert_close(copy.deepcopy(mod).matmul(x), y)


def test_progress_after_loading_a_mid_ramp_state_returns_to_the_target():
    mod, _, _ = _build(density=0.1)
    mod.on_progress(0.3)
    mid_ramp = {k: v.clone() for k, v in mod.state_dict().items()}  # a "best" checkpoint taken mid-ramp
    mod.on_progress(1.0)
    mod.load_state_dict(mid_ramp)
    assert int(mod.mask.sum()) > 120
    mod.on_progress(1.0)
    assert int(mod.mask.sum()) == 120
