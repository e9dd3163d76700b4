"""Contract every registered method must meet (STYLE.md: a new method is tested by being registered).

Each method has a row in CASES: a config that does not compress (it must reproduce the dense
matrix, or None where the method has no such setting, like LightRNN's row/column structure), a
config that compresses, the site roles to try, and bad knobs that must be refused.
"""
from __future__ import annotations

import json

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods import (CompressedEmbedding, CompressedLinear, config_from_dict, method_names,
                                weight_class)
from autoshrink.methods._storage import tensors_bytes
from autoshrink.sites import Site, SiteStats

V, D = 96, 16  # vocabulary-like site: rows = words
M, N = 48, 24  # recurrent-like site

CASES = {
    "quant": dict(exact={"bits": 32}, compress={"bits": 4, "group_size": 8}, roles=("embedding", "softmax", "recurrent"),
                  bad=[{"bits": 1}, {"bits": 33}, {"group_size": -1}]),
    "lowrank": dict(exact={"rank": 64}, compress={"rank": 4, "bits": 8}, roles=("embedding", "softmax", "recurrent"),
                    bad=[{"rank": -1}, {"bits": 1}, {"init": "magic"}]),
    "groupreduce": dict(exact={"blocks": 3, "rank": 16}, compress={"blocks": 4, "rank": 2, "refine": 2, "bits": 6},
                        roles=("embedding", "softmax"), bad=[{"blocks": 0}, {"rank": -1}, {"alpha": -1.0}]),
    "kronecker": dict(exact={"density": 1.0}, compress={"m1": 8, "n1": 4, "terms": 2, "density": 0.05},
                      roles=("embedding", "softmax", "recurrent"),
                      bad=[{"density": 1.5}, {"terms": 0}, {"m1": 7, "n1": 4}, {"cmr": 1.0}]),
    "prune": dict(exact={"density": 1.0}, compress={"density": 0.2, "bits": 8}, roles=("embedding", "softmax", "recurrent"),
                  bad=[{"density": 0.0}, {"density": 1.5}]),
    "tt": dict(exact={"cores": 2, "rank": 1024}, compress={"cores": 3, "rank": 3}, roles=("embedding", "softmax", "recurrent"),
               bad=[{"cores": 1}, {"rank": 0}]),
    "hash": dict(exact={"chunks": 2, "pool": 2 * V, "_only": "vocab"}, compress={"chunks": 4, "pool": 64},
                 roles=("embedding", "softmax"), bad=[{"chunks": 0}, {"pool": -1}, {"chunks": 3}]),
    "lightrnn": dict(exact=None, compress={}, roles=("embedding", "softmax"), bad=[{"rows": 2, "cols": 2}]),
}

SHAPES = {"embedding": (V, D), "softmax": (V, D), "recurrent": (M, N), "linear": (M, N)}


def _site(role: str) -> Site:
    return Site(name=f"toy.{role}", role=role, shape=SHAPES[role], bias=role != "embedding")


def _dense(role: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m, n = SHAPES[role]
    # Low-rank-ish plus noise, like trained weights: compression has something to keep.
    return (torch.randn(m, 4, generator=g) @ torch.randn(4, n, generator=g) + 0.3 * torch.randn(m, n, generator=g)) / n**0.5


def _freqs() -> torch.Tensor:
    return 1000.0 / torch.arange(1, V + 1, dtype=torch.float32)  # Zipf, rows in frequency order


def _build(name: str, knobs: dict, role: str):
    knobs = {k: v for k, v in knobs.items() if not k.startswith("_")}
    cfg = config_from_dict({"method": name, **knobs})
    site = _site(role)
    w = _dense(role)
    freqs = _freqs() if site.is_vocab else None
    return weight_class(cfg).build(w, site, cfg, SiteStats(freqs=freqs)), w, site, cfg


def _cases(kind: str):
    for name in method_names():
        case = CASES[name]
        for role in case["roles"]:
            knobs = case[kind]
            if knobs is None or (knobs.get("_only") == "vocab" and role not in ("embedding", "softmax")):
                continue
            yield pytest.param(name, role, knobs, id=f"{name}-{role}")


def test_every_registered_method_has_a_case():
    assert set(method_names()) == set(CASES), "add a CASES row for each registered method"
    assert len(method_names()) >= 8


@pytest.mark.parametrize("name,role,knobs", list(_cases("exact")))
def test_without_compression_reproduces_dense(name, role, knobs):
    mod, w, site, _ = _build(name, knobs, role)
    torch.testing.assert_close(mod.weight(), w, atol=1e-4, rtol=1e-4)
    x = torch.randn(5, site.shape[1])
    torch.testing.assert_close(mod.matmul(x), x @ w.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_output_shapes_and_matmul_agrees_with_weight(name, role, knobs):
    mod, w, site, _ = _build(name, knobs, role)
    m, n = site.shape
    if role == "embedding":
        ids = torch.randint(0, m, (3, 7))
        out = CompressedEmbedding(mod)(ids)
        assert out.shape == (3, 7, n)
    else:
        x = torch.randn(3, 7, n)
        lin = CompressedLinear(mod, torch.zeros(m))
        out = lin(x)
        assert out.shape == (3, 7, m)
        if mod.uses_site_bias:  # LightRNN returns log-probabilities, not W x
            torch.testing.assert_close(out, x @ mod.weight().T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_compresses_and_analytic_bytes_equal_export(name, role, knobs):
    mod, w, site, cfg = _build(name, knobs, role)
    exported = mod.export()
    assert all(isinstance(t, torch.Tensor) for t in exported.values())
    assert type(mod).stored_bytes(site, cfg) == tensors_bytes(exported)
    assert tensors_bytes(exported) < 4 * site.shape[0] * site.shape[1], "the compressing config must compress"


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")) + list(_cases("exact")))
def test_export_round_trip_restores_the_stored_weight(name, role, knobs):
    mod, w, site, cfg = _build(name, knobs, role)
    back = type(mod).from_export(mod.export(), site, cfg)
    torch.testing.assert_close(back.weight(), mod.weight(), atol=1e-4, rtol=1e-4)
    assert type(mod).stored_bytes(site, cfg) == tensors_bytes(back.export())


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_gradients_reach_every_trainable_tensor(name, role, knobs):
    mod, w, site, _ = _build(name, knobs, role)
    mod.train()
    mod.on_progress(0.5)
    if role == "embedding":
        out = mod.lookup(torch.arange(site.shape[0]))
    else:
        out = mod.matmul(torch.randn(4, site.shape[1]))
    (out ** 2).sum().backward()
    params = [(n, p) for n, p in mod.named_parameters() if p.requires_grad]
    assert params, "a compressed weight must have trainable tensors"
    for pname, p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no gradient reached {pname}"
        assert p.grad.abs().sum() > 0, f"zero gradient at {pname}"


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_short_fine_tune_lowers_the_loss(name, role, knobs):
    torch.manual_seed(0)
    mod, w, site, _ = _build(name, knobs, role)
    target = _dense(role, seed=1)  # a different matrix: fitting it must make progress
    x = torch.randn(64, site.shape[1])
    if role == "embedding":
        def loss_fn():
            return ((mod.lookup(torch.arange(site.shape[0])) - target) ** 2).mean()
    elif mod.uses_site_bias:
        def loss_fn():
            return ((mod.matmul(x) - x @ target.T) ** 2).mean()
    else:  # output distribution methods: fit the target's next-word distribution
        def loss_fn():
            p = torch.softmax(x @ target.T, dim=-1)
            return -(p * torch.log_softmax(mod.matmul(x), dim=-1)).sum(-1).mean()
    mod.train()
    opt = torch.optim.Adam([p for p in mod.parameters() if p.requires_grad], lr=1e-2)
    first = loss_fn().item()
    for step in range(60):
        mod.on_progress(step / 60)
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    mod.on_progress(1.0)
    assert loss_fn().item() < first


@pytest.mark.parametrize("name", method_names())
def test_bad_knobs_are_one_clear_error(name):
    for knobs in CASES[name]["bad"]:
        with pytest.raises(UserError) as e:
            cfg = config_from_dict({"method": name, **knobs})
            role = CASES[name]["roles"][0]
            weight_class(cfg).build(_dense(role), _site(role), cfg, SiteStats(freqs=_freqs()))
        assert name in str(e.value) or any(str(v) in str(e.value) for v in knobs.values()), str(e.value)


@pytest.mark.parametrize("name", method_names())
def test_config_json_round_trip_and_defaults(name):
    cfg = config_from_dict({"method": name})  # every knob has a default
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(UserError):
        config_from_dict({"method": name, "no_such_knob": 1})


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown method"):
        config_from_dict({"method": "magic"})


@pytest.mark.parametrize("name", [n for n in method_names() if "recurrent" not in CASES[n]["roles"]])
def test_vocabulary_methods_refuse_recurrent_sites(name):
    cfg = config_from_dict({"method": name})
    with pytest.raises(UserError):
        weight_class(cfg).build(_dense("recurrent"), _site("recurrent"), cfg)
