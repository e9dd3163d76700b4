"""Doped Kronecker products: NKP exactness (pitfall 5), the factored forward, doping anneal, CMR."""

from __future__ import annotations

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods import config_from_dict, weight_class
from autoshrink.methods._storage import tensors_bytes
from autoshrink.methods._linalg import nearest_kronecker
from autoshrink.methods.kronecker import kron_sum
from autoshrink.methods._sparse import RAMP_END
from autoshrink.sites import Site


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _site(m, n, role="recurrent"):
    return Site(name=f"toy.{role}", role=role, shape=(m, n))


def _build(w, role="recurrent", **knobs):
    cfg = config_from_dict({"method": "kronecker", **knobs})
    site = _site(*w.shape, role=role)
    return weight_class(cfg).build(w, site, cfg), site, cfg


def test_kron_sum_matches_torch_kron():
    a, b = torch.randn(2, 3, 5, generator=_gen()), torch.randn(2, 4, 2, generator=_gen(1))
    torch.testing.assert_close(kron_sum(a, b), torch.kron(a[0], b[0]) + torch.kron(a[1], b[1]))


# (3x5)(x)(4x2): full SVD; (20x20)(x)(20x15): the rearranged matrix is 400x300, randomised SVD
@pytest.mark.parametrize("a_shape,b_shape", [((3, 5), (4, 2)), ((20, 20), (20, 15))])
def test_nearest_kronecker_of_an_exact_kronecker_matrix_is_exact(a_shape, b_shape):
    a, b = torch.randn(*a_shape, generator=_gen()), torch.randn(*b_shape, generator=_gen(1))
    w = torch.kron(a, b)
    mod, _, _ = _build(w, m1=a_shape[0], n1=a_shape[1])
    assert (mod.weight() - w).abs().max() < 1e-5 * w.abs().max()
    # sqrt(sigma) split: both factors carry the same norm (quantisation ranges match)
    torch.testing.assert_close(mod.a.norm(), mod.b.norm())


def test_sum_of_two_kronecker_products_is_exact_with_two_terms():
    a, b = torch.randn(2, 6, 4, generator=_gen()), torch.randn(2, 8, 6, generator=_gen(1))
    w = kron_sum(a, b)
    one, _, _ = _build(w, m1=6, n1=4, terms=1)
    two, _, _ = _build(w, m1=6, n1=4, terms=2)
    assert (two.weight() - w).abs().max() < 1e-5
    assert (one.weight() - w).norm() > 1e-2 * w.norm()


def test_auto_shape_picks_the_most_square_divisors():
    cfg = config_from_dict({"method": "kronecker"})
    assert cfg.factors((96, 16)) == (8, 12, 4, 4)
    assert cfg.factors((2600, 1300)) == (50, 52, 26, 50)
    assert cfg.factors((10000, 650)) == (100, 100, 25, 26)
    assert cfg.factors((97, 36)) == (1, 97, 6, 6)  # a prime has only the trivial pair


def test_shapes_that_do_not_factor_are_refused_with_the_shapes():
    cfg = config_from_dict({"method": "kronecker", "m1": 7, "n1": 4})
    with pytest.raises(UserError, match=r"kronecker.*48 x 24"):
        weight_class(cfg).build(torch.randn(48, 24), _site(48, 24), cfg)
    cfg = config_from_dict({"method": "kronecker", "m1": 2, "n1": 2, "terms": 5})
    with pytest.raises(UserError, match="terms=5"):
        weight_class(cfg).build(torch.randn(4, 4), _site(4, 4), cfg)


@pytest.mark.parametrize("m1,n1", [(4, 3), (12, 8), (2, 24)])  # both contraction orders are taken
@pytest.mark.parametrize("density,bits", [(0.0, 32), (0.05, 16), (0.05, 4)])
def test_factored_matmul_and_lookup_agree_with_the_weight(m1, n1, density, bits):
    w = torch.randn(48, 24, generator=_gen())
    mod, _, _ = _build(w, m1=m1, n1=n1, terms=2, density=density, bits=bits)
    x = torch.randn(2, 3, 24)
    torch.testing.assert_close(mod.matmul(x), x @ mod.weight().T, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # inference path (CSR overlay on CPU)
        torch.testing.assert_close(mod.eval().matmul(x), x @ mod.weight().T, atol=1e-5, rtol=1e-5)
    ids = torch.tensor([[0, 47, 13], [5, 5, 30]])
    torch.testing.assert_close(mod.lookup(ids), mod.weight()[ids])


def test_density_one_is_exact_and_doping_helps():
    w = torch.randn(48, 24, generator=_gen())
    exact, _, _ = _build(w, density=1.0)
    torch.testing.assert_close(exact.weight(), w)
    errors = [(_build(w, density=d)[0].weight() - w).norm() for d in (0.0, 0.05, 0.2)]
    assert errors[0] > errors[1] > errors[2]


def test_mask_has_exactly_k_at_build_and_after_the_anneal():
    w = torch.randn(48, 24, generator=_gen())
    mod, _, cfg = _build(w, density=0.05)
    k = round(0.05 * 48 * 24)
    assert int(mod.mask.sum()) == k  # an untrained model is at the stored density
    counts = []
    for step in range(101):
        mod.on_progress(step / 100)
        counts.append(int(mod.mask.sum()))
    assert counts[0] == round(min(1.0, 10 * 0.05) * 48 * 24)
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert counts[int(RAMP_END * 100)] == counts[-1] == k
    assert tensors_bytes(mod.export()) == type(mod).stored_bytes(_site(48, 24), cfg)


def test_anneal_revives_residual_entries_outside_the_initial_mask():
    w = torch.randn(48, 24, generator=_gen())
    mod, _, _ = _build(w, density=0.02)
    initial = mod.mask.clone()
    mod.on_progress(0.0)
    assert (mod.mask & ~initial).any() and (mod.s[~initial] != 0).any()


def test_cmr_dropout_only_in_train_mode_during_the_anneal():
    w = torch.randn(48, 24, generator=_gen())
    mod, _, _ = _build(w, density=0.1, cmr=0.5)
    x = torch.randn(16, 24)
    mod.train()
    deterministic = mod.matmul(x)
    torch.testing.assert_close(mod.matmul(x), deterministic)  # no progress yet: no dropout
    mod.on_progress(0.3)
    assert not torch.equal(mod.matmul(x), mod.matmul(x))  # the S pathway is dropped at random
    kp = x @ mod.kp_only_weight().T
    ys = mod.matmul(x) - kp  # dropout acts on outputs of S x: each one is 0 or scaled by 2
    full = x @ mod.sparse_weight().T
    assert torch.all(torch.isclose(ys, 0 * full, atol=1e-5) | torch.isclose(ys, 2 * full, atol=1e-5))
    mod.eval()
    torch.testing.assert_close(mod.matmul(x), mod.matmul(x))
    mod.train()
    mod.on_progress(0.8)  # after the anneal: CMR off
    torch.testing.assert_close(mod.matmul(x), x @ mod.weight().T, atol=1e-5, rtol=1e-5)


def test_kp_only_zeroes_the_overlay():
    w = torch.randn(48, 24, generator=_gen())
    mod, _, _ = _build(w, density=0.1)
    mod.kp_only = True
    x = torch.randn(3, 24)
    torch.testing.assert_close(mod.weight(), mod.kp_only_weight())
    torch.testing.assert_close(mod.matmul(x), x @ mod.kp_only_weight().T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mod.lookup(torch.tensor([3, 4])), mod.kp_only_weight()[[3, 4]])


@pytest.mark.parametrize("density", [0.0, 0.05, 0.6])
def test_quantised_export_round_trip_and_bytes(density):
    w = torch.randn(48, 24, generator=_gen())
    mod, site, cfg = _build(w, m1=8, n1=4, terms=2, density=density, bits=4, group_size=8)
    exported = mod.export()
    assert tensors_bytes(exported) == type(mod).stored_bytes(site, cfg)
    back = type(mod).from_export(exported, site, cfg)
    torch.testing.assert_close(back.weight(), mod.weight())


def test_nearest_kronecker_returns_factors_of_the_requested_shapes():
    a, b = nearest_kronecker(torch.randn(12, 10), 3, 5, terms=2)
    assert a.shape == (2, 3, 5) and b.shape == (2, 4, 2)
