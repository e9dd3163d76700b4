"""Contract every registered method must meet (docs/design.md: a new method is tested by being registered).

Each method has a row in CASES: a config that does not compress (it must reproduce the dense
matrix, or None where the method has no such setting, like LightRNN's row/column structure), a
config that compresses, the site roles to try, and bad knobs that must be refused.
"""

from __future__ import annotations

import json

import pytest
import torch

from autoshrink.errors import UserError
from autoshrink.methods import CompressedEmbedding, CompressedLinear, config_from_dict, method_names, weight_class
from autoshrink.methods._storage import tensors_bytes
from autoshrink.sites import Site, SiteStats

V, D = 96, 16  # vocabulary-like site: rows = words
M, N = 48, 24  # recurrent-like site

CASES = {
    "quant": dict(
        exact={"bits": 32},
        compress={"bits": 4, "group_size": 8},
        roles=("embedding", "softmax", "recurrent"),
        bad=[{"bits": 1}, {"bits": 33}, {"group_size": -1}],
    ),
    "lowrank": dict(
        exact={"rank": 64},
        compress={"rank": 4, "bits": 8},
        roles=("embedding", "softmax", "recurrent"),
        bad=[{"rank": -1}, {"bits": 1}, {"init": "magic"}],
    ),
    "groupreduce": dict(
        exact={"blocks": 3, "rank": 16},
        compress={"blocks": 4, "rank": 2, "refine": 2, "bits": 6},
        roles=("embedding", "softmax"),
        bad=[{"blocks": 0}, {"rank": -1}, {"alpha": -1.0}],
    ),
    "kronecker": dict(
        exact={"density": 1.0},
        compress={"m1": 8, "n1": 4, "terms": 2, "density": 0.05},
        roles=("embedding", "softmax", "recurrent"),
        bad=[{"density": 1.5}, {"terms": 0}, {"m1": 7, "n1": 4}, {"cmr": 1.0}],
    ),
    "prune": dict(
        exact={"density": 1.0},
        compress={"density": 0.2, "bits": 8},
        roles=("embedding", "softmax", "recurrent"),
        bad=[{"density": 0.0}, {"density": 1.5}],
    ),
    "tt": dict(
        exact={"cores": 2, "rank": 1024},
        compress={"cores": 3, "rank": 3},
        roles=("embedding", "softmax", "recurrent"),
        bad=[{"cores": 1}, {"rank": 0}],
    ),
    "hash": dict(
        exact={"chunks": 2, "pool": 2 * V, "_only": "vocab"},
        compress={"chunks": 4, "pool": 64},
        roles=("embedding", "softmax"),
        bad=[{"chunks": 0}, {"pool": -1}, {"chunks": 3}],
    ),
    "lightrnn": dict(exact=None, compress={}, roles=("embedding", "softmax"), bad=[{"rows": 2, "cols": 2}]),
}

# Further compressed cases of a method's knobs that change its storage: (method, knobs, roles).
VARIANTS = {
    "lowrank-gates": ("lowrank", {"rank": 8, "bits": 4, "u_groups": 8, "gates": 4}, ("recurrent",)),
    "lowrank-gates-fp32": ("lowrank", {"rank": 6, "u_groups": 4, "gates": 4}, ("recurrent",)),
    "lowrank-gates-block-scales": ("lowrank", {"rank": 8, "bits": 4, "gates": 4}, ("recurrent",)),
}

SHAPES = {"embedding": (V, D), "softmax": (V, D), "recurrent": (M, N), "linear": (M, N)}


def _site(role: str) -> Site:
    return Site(name=f"toy.{role}", role=role, shape=SHAPES[role], bias=role != "embedding")


def _dense(role: str, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m, n = SHAPES[role]
    # Low-rank-ish plus noise, like trained weights: compression has something to keep.
    return (
        torch.randn(m, 4, generator=g) @ torch.randn(4, n, generator=g) + 0.3 * torch.randn(m, n, generator=g)
    ) / n**0.5


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
    if kind == "compress":
        for label, (name, knobs, roles) in VARIANTS.items():
            for role in roles:
                yield pytest.param(name, role, knobs, id=f"{label}-{role}")


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
    (out**2).sum().backward()
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


# --- contract of issue 14: what the first suite missed -----------------------------------------
def _stats(role: str, seed: int = 0) -> SiteStats:
    """Calibration statistics of a toy site: correlated, non-centred inputs; shuffled word counts."""
    g = torch.Generator().manual_seed(seed)
    m, n = SHAPES[role]
    freqs = _freqs()[torch.randperm(V, generator=g)] if role in ("embedding", "softmax") else None
    if role == "embedding":
        return SiteStats(freqs=freqs)
    x = torch.randn(512, n, generator=g) @ torch.randn(n, n, generator=g) + torch.randn(n, generator=g)
    return SiteStats(moment=(x.T @ x / len(x)).double(), tokens=len(x), freqs=freqs, mean=x.mean(0).double())


def _build_with(name: str, knobs: dict, role: str, stats: SiteStats | None, init: str = "data"):
    knobs = {k: v for k, v in knobs.items() if not k.startswith("_")}
    cfg = config_from_dict({"method": name, **knobs, "init": init})
    site = _site(role)
    w = _dense(role)
    return weight_class(cfg).build(w, site, cfg, stats), w, site, cfg


def _output_error(w: torch.Tensor, w_hat: torch.Tensor, stats: SiteStats) -> float:
    """sum_i f_i (w_i - w_hat_i) H (w_i - w_hat_i)^T: the (frequency-weighted) output error."""
    e = (w - w_hat).double()
    per_row = ((e @ stats.moment) * e).sum(1) if stats.moment is not None else (e * e).sum(1)
    return float((per_row * (stats.freqs.double() if stats.freqs is not None else 1.0)).sum())


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_stored_bytes_equal_export_with_counts_out_of_zipf_order(name, role, knobs):
    stats = _stats(role)
    mod, w, site, cfg = _build_with(name, knobs, role, stats)
    assert type(mod).stored_bytes(site, cfg, stats.freqs) == tensors_bytes(mod.export()) == mod.nbytes()


@pytest.mark.parametrize("name,role,knobs", [c for c in _cases("compress") if c.values[1] in ("embedding", "softmax")])
def test_lookup_is_the_rows_of_weight(name, role, knobs):
    mod, w, site, _ = _build_with(name, knobs, role, _stats(role))
    ids = torch.tensor([[0, 5, 95], [5, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(mod.lookup(ids), mod.weight()[ids], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,role,knobs", [c for c in _cases("compress") if c.values[1] == "recurrent"])
def test_recurrent_sites_build_the_same_matrix_for_a_sequence(name, role, knobs):
    mod, w, site, _ = _build_with(name, knobs, role, _stats(role))
    bias = torch.randn(site.shape[0])
    lin = CompressedLinear(mod, bias).eval()
    with torch.no_grad():
        weight, b = lin.dense_parameters()
        torch.testing.assert_close(weight, mod.weight(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b, bias)
        again, _ = lin.dense_parameters()  # served from the cache in inference
        assert torch.equal(again, weight)
    lin.train()
    weight, _ = lin.dense_parameters()
    weight.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_state_dict_round_trip(name, role, knobs):
    stats = _stats(role)
    mod, w, site, cfg = _build_with(name, knobs, role, stats)
    other = weight_class(cfg).build(_dense(role, seed=3), site, cfg, stats)
    other.load_state_dict(mod.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other.weight(), mod.weight())
        x = torch.randn(4, site.shape[1])
        torch.testing.assert_close(other.matmul(x), mod.matmul(x))


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_moves_with_its_tensors(name, role, knobs):
    """Nothing inside a forward is made on a fixed device or dtype: after .to(float64) every
    tensor, and every output, is float64 (a CPU-made tensor breaks CUDA the same way)."""
    mod, w, site, _ = _build_with(name, knobs, role, _stats(role))
    mod = mod.to(torch.float64)
    for t in list(mod.parameters()) + list(mod.buffers()):
        assert not t.is_floating_point() or t.dtype == torch.float64
    x = torch.randn(3, site.shape[1], dtype=torch.float64)
    for train in (True, False):
        mod.train(train)
        with torch.set_grad_enabled(train):
            assert mod.matmul(x).dtype == torch.float64
            assert mod.weight().dtype == torch.float64
            assert mod.lookup(torch.tensor([0, 3])).dtype == torch.float64


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_moves_to_another_device(name, role, knobs, monkeypatch):
    """A move to the 'meta' device (no data): a tensor made on the CPU in a forward would clash."""
    import torch.fx.experimental._config as fx_config

    monkeypatch.setattr(fx_config, "meta_nonzero_assume_all_nonzero", True)  # masks index by value
    mod, w, site, _ = _build_with(name, knobs, role, _stats(role))
    mod = mod.to("meta").train()
    x = torch.randn(3, site.shape[1], device="meta")
    assert mod.matmul(x).device.type == "meta"
    assert mod.weight().device.type == "meta"


SIZES = [(96, 16), (48, 24), (2002, 32), (128, 32), (10002, 256), (1024, 256), (50, 50)]


@pytest.mark.parametrize("name", method_names())
def test_default_knobs_shrink_every_site_they_apply_to(name):
    cfg = config_from_dict({"method": name})
    for shape in SIZES:
        for role in CASES[name]["roles"]:
            site = Site(f"s.{role}", role, shape, bias=role != "embedding")
            freqs = 1.0 / torch.arange(1, shape[0] + 1) if site.is_vocab else None
            try:
                cfg.check_site(site)
            except UserError:
                continue  # a shape the method cannot factor (e.g. chunks not dividing D)
            cfg.check_shrinks(site, freqs)  # raises if the defaults grow the site


def test_a_config_storing_more_than_the_dense_site_is_one_clear_error():
    from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
    from autoshrink.plan import compress

    model = LSTMLM(LSTMLMConfig(V, D, D, 1, 0.0))
    with pytest.raises(UserError, match=r"lowrank.*stores .* more than its dense"):
        compress(model, {"encoder": {"method": "lowrank", "rank": 16}})
    with pytest.raises(UserError, match="more than its dense"):
        config_from_dict({"method": "tt", "rank": 1024}).check_shrinks(_site("recurrent"))


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")))
def test_data_aware_init_is_never_worse_on_the_calibration_inputs(name, role, knobs):
    stats = _stats(role)
    plain, w, site, _ = _build_with(name, knobs, role, stats, init="plain")
    aware, _, _, _ = _build_with(name, knobs, role, stats, init="data")
    if not aware.uses_site_bias:
        pytest.skip("LightRNN's softmax is a distribution, not W x")
    with torch.no_grad():
        assert _output_error(w, aware.weight(), stats) <= _output_error(w, plain.weight(), stats) * (1 + 1e-6)


@pytest.mark.parametrize("name,role,knobs", list(_cases("compress")) + list(_cases("exact")))
def test_plain_init_ignores_the_calibration(name, role, knobs):
    """init "plain" is today's behaviour: only word counts (a method's own input) are used."""
    stats = _stats(role)
    with_stats, *_ = _build_with(name, knobs, role, stats, init="plain")
    counts_only, *_ = _build_with(name, knobs, role, SiteStats(freqs=stats.freqs), init="plain")
    with torch.no_grad():
        assert torch.equal(with_stats.weight(), counts_only.weight())


@pytest.mark.parametrize("name", method_names())
def test_every_knob_has_help(name):
    for knob, _default, help_text in config_from_dict({"method": name}).knobs():
        assert help_text and len(help_text) > 15 and "\n" not in help_text, f"{name}.{knob} needs a one-line help"
