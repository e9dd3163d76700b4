"""tt: balanced factorisation, TT-SVD init, core-by-core forward (docs/methods.md, Tensor-train)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods import config_from_dict
from autoshrink.methods.tt import TTConfig, TTWeight, balanced_factors, tt_layout
from autoshrink.sites import Site


def _dense_from_cores(cores: list[torch.Tensor], m: int, n: int) -> torch.Tensor:
    """W from its cores the slow, obvious way: an independent check of matmul and lookup."""
    t = cores[0][0]  # (m_1, n_1, r_1)
    for g in cores[1:]:
        t = torch.einsum("...r,rijs->...ijs", t, g)
    t = t[..., 0]  # (m_1, n_1, ..., m_d, n_d)
    d = len(cores)
    return t.permute(*range(0, 2 * d, 2), *range(1, 2 * d, 2)).reshape(m, n)


def _build(m: int, n: int, seed: int = 0, **knobs) -> tuple[TTWeight, torch.Tensor]:
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed))
    return TTWeight.build(w, Site("s", "linear", (m, n)), TTConfig(**knobs)), w


@pytest.mark.parametrize("x", [1, 2, 16, 24, 96, 97, 650, 1300, 10000, 50257, 2**10 * 3**3])
@pytest.mark.parametrize("d", [2, 3, 4])
def test_factors_multiply_back_and_are_the_most_balanced(x, d):
    f = balanced_factors(x, d)
    assert len(f) == d and math.prod(f) == x and list(f) == sorted(f, reverse=True)
    if x <= 2000:  # brute force: no factorisation has a smaller largest factor (then next, ...)
        divs = [k for k in range(1, x + 1) if x % k == 0]
        best = min(tuple(sorted(c, reverse=True)) for c in itertools.product(divs, repeat=d) if math.prod(c) == x)
        assert f == best


def test_known_factorisations():
    assert balanced_factors(96, 3) == (6, 4, 4)
    assert balanced_factors(97, 3) == (97, 1, 1)  # a prime: factors of 1 are allowed
    assert balanced_factors(10000, 4) == (10, 10, 10, 10)


def test_ranks_are_clipped_to_their_largest_useful_value():
    lay = tt_layout(96, 16, 3, 10**6)
    modes = [a * b for a, b in zip(lay.row_modes, lay.col_modes)]
    assert lay.ranks == (1, min(modes[0], modes[1] * modes[2]), min(modes[0] * modes[1], modes[2]), 1)
    assert tt_layout(96, 16, 3, 3).ranks == (1, 3, 3, 1)


@pytest.mark.parametrize("d", [2, 3, 4])
def test_huge_rank_is_the_exact_decomposition(d):
    mod, w = _build(48, 24, cores=d, rank=10**6)
    torch.testing.assert_close(mod.weight(), w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("d", [3, 4])
def test_tt_svd_recovers_an_exactly_low_tt_rank_matrix(d):
    m, n, r = 96, 48, 2
    lay = tt_layout(m, n, d, r)
    g = torch.Generator().manual_seed(1)
    true = [torch.randn(lay.core_shape(k), generator=g) for k in range(d)]
    w = _dense_from_cores(true, m, n)
    mod = TTWeight.build(w, Site("s", "linear", (m, n)), TTConfig(cores=d, rank=r))
    assert (mod.weight() - w).norm() <= 1e-4 * w.norm()
    # One rank lower cannot be exact: the rank is really used.
    low = TTWeight.build(w, Site("s", "linear", (m, n)), TTConfig(cores=d, rank=r - 1))
    assert (low.weight() - w).norm() > 1e-2 * w.norm()


@pytest.mark.parametrize("bits,group_size", [(32, 0), (4, 0), (3, 4)])
@pytest.mark.parametrize("d", [2, 3, 4])
def test_forward_paths_agree_with_the_cores(d, bits, group_size):
    m, n = 96, 24
    mod, _ = _build(m, n, cores=d, rank=3, bits=bits, group_size=group_size)
    w = _dense_from_cores([mod._core(k) for k in range(d)], m, n)
    torch.testing.assert_close(mod.weight(), w, atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 3, n)
    torch.testing.assert_close(mod.matmul(x), x @ w.T, atol=1e-4, rtol=1e-4)
    ids = torch.tensor([[0, 95, 17], [42, 42, 1]])
    torch.testing.assert_close(mod.lookup(ids), w[ids], atol=1e-5, rtol=1e-5)


def test_prime_dimension_works():
    mod, w = _build(97, 16, cores=3, rank=10**6)
    torch.testing.assert_close(mod.weight(), w, atol=1e-4, rtol=1e-4)


def test_forward_never_forms_the_dense_matrix(monkeypatch):
    mod, _ = _build(96, 24, cores=3, rank=3)
    monkeypatch.setattr(mod, "weight", lambda: pytest.fail("matmul/lookup formed W"))
    assert mod.matmul(torch.randn(5, 24)).shape == (5, 96)
    assert mod.lookup(torch.tensor([3, 4])).shape == (2, 24)


def test_stored_bytes_are_the_core_parameters():
    site = Site("s", "linear", (96, 24))
    cfg = TTConfig(cores=3, rank=3)
    lay = cfg.layout(site)
    params = sum(math.prod(lay.core_shape(k)) for k in range(3))
    assert TTWeight.stored_bytes(site, cfg) == 4 * params
    # 8 bits: codes plus an fp16 scale and minimum per row (r_{k-1} m_k) of each stored core.
    cfg8 = TTConfig(cores=3, rank=3, bits=8)
    rows = sum(lay.ranks[k] * lay.row_modes[k] for k in range(3))
    assert TTWeight.stored_bytes(site, cfg8) == params + 4 * rows


@pytest.mark.parametrize("knobs", [{"cores": 1}, {"cores": 5}, {"rank": 0}])
def test_bad_knobs_name_the_method_and_value(knobs):
    with pytest.raises(UserError, match=rf"tt.*{list(knobs.values())[0]}"):
        config_from_dict({"method": "tt", **knobs})
