"""The budget bounds the file: every method says what its export writes (names, dtypes, shapes)
before building, so the analytic bytes of a plan are the size of model.safetensors, header
included, and a plan fitted or allocated to a budget exports a file within it."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import autoshrink
from autoshrink.allocate.pipeline import fixed_bytes, site_cost
from autoshrink.final.export import export_tensors, save_compressed
from autoshrink.methods import (
    config_from_dict,
    method_names,
    prefixed,
    safetensors_header_bytes,
    specs_bytes,
    specs_of,
    weight_class,
)
from autoshrink.models import discover_sites
from autoshrink.plan import (
    ModelFile,
    compress,
    dense_bytes,
    parse_plan,
    plan_bytes_bound,
    plan_stored_bytes,
    stored_bytes,
)
from autoshrink.plan.bytes import FILE_METADATA, plan_specs
from autoshrink.plan.fit import uniform_plan
from autoshrink.plan.repair import repair
from autoshrink.sites import Site, SiteStats

V, D = 96, 16  # vocabulary-like sites: rows = words
M, N = 48, 24  # recurrent-like sites
WIDE = (8, 400)  # wide enough that a sparse overlay is cheaper as CSR than as a bitmask
HUGE_ROW = (1, 70000)  # more columns than uint16 indexes: int32 column indices

# Several storage widths and group sizes (5 and 7 do not divide the rows) per method.
CONFIGS = {
    "quant": [{"bits": 2}, {"bits": 3, "group_size": 5}, {"bits": 8}, {"bits": 16}, {"bits": 32}],
    "lowrank": [{"rank": 3, "bits": 4, "group_size": 5}, {"bits": 8}, {"rank": 5, "bits": 16}, {"rank": 2}],
    "groupreduce": [
        {"blocks": 4, "rank": 2, "bits": 6},
        {"blocks": 3, "rank": 16},  # dense head blocks
        {"blocks": 4, "rank": 2, "refine": 2, "bits": 8, "group_size": 7},
        {"blocks": 2, "rank": 3, "bits": 16, "alpha": 0.5},
    ],
    "kronecker": [
        {},
        {"m1": 8, "n1": 4, "terms": 2, "density": 0.05, "bits": 8},
        {"density": 0.5, "bits": 4, "group_size": 5},
        {"terms": 2, "density": 0.1, "bits": 16},
    ],
    "prune": [{"density": 0.05, "bits": 8}, {"density": 0.6}, {"density": 0.3, "bits": 4, "group_size": 7}],
    "tt": [{"cores": 2, "rank": 3, "bits": 16}, {"cores": 3, "rank": 2, "bits": 8}, {"cores": 4, "rank": 4, "bits": 5}],
    "hash": [
        {"chunks": 4, "pool": 64, "bits": 8},
        {"chunks": 2},
        {"chunks": 8, "pool": 10, "bits": 3, "group_size": 1},
    ],
    "lightrnn": [{"bits": 8}, {"rows": 1, "cols": V}, {"rows": 12, "cols": 8, "bits": 16}],  # rows=1: 0-bit row map
}
SHAPES = {"embedding": (V, D), "softmax": (V, D), "recurrent": (M, N)}
ROLES = {"recurrent", "embedding", "softmax"}


def _counts(seed: int = 0) -> torch.Tensor:
    """Zipf word counts, shuffled: not in row order (GroupReduce then stores its word map)."""
    g = torch.Generator().manual_seed(seed)
    return (1000.0 / torch.arange(1, V + 1, dtype=torch.float32))[torch.randperm(V, generator=g)]


def _cases():
    for name in method_names():
        roles = [r for r in ("embedding", "softmax", "recurrent") if r in config_from_dict({"method": name}).roles]
        for k, knobs in enumerate(CONFIGS[name]):
            for role in roles:
                yield pytest.param(name, knobs, role, SHAPES[role], id=f"{name}-{k}-{role}")
    yield pytest.param("prune", {"density": 0.05, "bits": 8}, "recurrent", WIDE, id="prune-csr-uint16")
    yield pytest.param("prune", {"density": 1e-4, "bits": 32}, "recurrent", HUGE_ROW, id="prune-csr-int32")
    yield pytest.param("kronecker", {"m1": 2, "n1": 20, "density": 0.05}, "recurrent", WIDE, id="kronecker-csr")


def test_every_method_has_configs():
    assert set(CONFIGS) == set(method_names())


@pytest.mark.parametrize("name,knobs,role,shape", list(_cases()))
def test_predicted_specs_are_what_the_export_writes(name, knobs, role, shape, tmp_path):
    site = Site(name=f"toy.{role}", role=role, shape=shape, bias=role != "embedding")
    cfg = config_from_dict({"method": name, **knobs})
    cls = weight_class(cfg)
    freqs = _counts() if site.is_vocab else None
    g = torch.Generator().manual_seed(1)
    module = cls.build(torch.randn(*shape, generator=g), site, cfg, SiteStats(freqs=freqs))
    exported = module.export()
    predicted = cls.export_specs(site, cfg, freqs)
    assert specs_of(exported) == predicted == module.tensor_specs()  # names, dtypes, shapes
    assert cls.stored_bytes(site, cfg, freqs) == specs_bytes(predicted) == module.nbytes()
    back = cls.from_export(exported, site, cfg)
    assert specs_of(back.export()) == predicted
    # The file: the header the specs predict is the one safetensors writes.
    path = tmp_path / "m.safetensors"
    save_file(prefixed(site.name, exported), str(path), metadata=FILE_METADATA)
    named = prefixed(site.name, predicted)
    assert os.path.getsize(path) == safetensors_header_bytes(named, FILE_METADATA) + specs_bytes(named)
    with open(path, "rb") as f:  # the 8-byte length that opens the file
        assert 8 + int.from_bytes(f.read(8), "little") == safetensors_header_bytes(named, FILE_METADATA)


def test_groupreduce_counts_in_row_order_store_no_word_map():
    site = Site(name="toy", role="softmax", shape=(V, D), bias=True)
    cfg = config_from_dict({"method": "groupreduce", "blocks": 4, "rank": 2})
    in_order = 1000.0 / torch.arange(1, V + 1, dtype=torch.float32)
    assert "perm" not in weight_class(cfg).export_specs(site, cfg, in_order)
    assert "perm" in weight_class(cfg).export_specs(site, cfg, _counts())


# --- whole models: compress -> save_compressed -> os.path.getsize ----------------------------
def _plan(method: str, sites) -> dict:
    """One method (a config of CONFIGS that compresses) on every site that takes it."""
    knobs = CONFIGS[method][0]
    plan = {}
    for site in sites:
        cfg = config_from_dict({"method": method, **knobs})
        try:
            cfg.check_shrinks(site)
        except autoshrink.UserError:
            continue
        plan[site.name] = cfg.to_dict()
    return plan


@pytest.fixture(scope="module")
def dense(tiny_model_dir):
    return autoshrink.load(str(tiny_model_dir))


@pytest.mark.parametrize("method", method_names())
def test_the_export_of_every_method_is_the_analytic_size(dense, method, tmp_path):
    sites = discover_sites(dense)
    counts = dense.vocab.freqs[torch.randperm(len(dense.vocab), generator=torch.Generator().manual_seed(3))]
    plan = _plan(method, sites)
    assert plan, method
    analytic = plan_stored_bytes(sites, parse_plan(plan), counts, ModelFile.of(dense))
    assert plan_stored_bytes(sites, parse_plan(plan), counts) == analytic  # the LSTM is its sites
    small = compress(dense, plan, freqs=counts)
    save_compressed(small, plan, tmp_path, dense.meta, {})
    assert os.path.getsize(tmp_path / "model.safetensors") == analytic == stored_bytes(small)
    assert stored_bytes(autoshrink.load(str(tmp_path))) == analytic
    assert analytic <= plan_bytes_bound(sites, parse_plan(plan), counts, ModelFile.of(dense))


class _Tied(nn.Module):
    """An embedding tied to an output layer that has its own bias, and a plain layer between."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 40)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(self.mid(self.emb(ids)))


@pytest.mark.parametrize(
    "plan",
    [
        {"emb": {"method": "lowrank", "rank": 2, "bits": 8}},
        {"head": {"method": "quant", "bits": 4, "group_size": 3}},
        {"emb": {"method": "lightrnn", "bits": 8}, "mid": {"method": "prune", "density": 0.5}},
        {"head": {"method": "groupreduce", "blocks": 2, "rank": 2}},
    ],
    ids=["lowrank-owner", "quant-partner", "lightrnn-keeps-the-bias", "groupreduce"],
)
def test_tied_weights_and_biases_are_counted_as_the_file_holds_them(plan, tmp_path):
    torch.manual_seed(0)
    model = _Tied()
    sites = discover_sites(model)
    counts = torch.arange(40, dtype=torch.float32) % 7 + 1  # not in frequency order
    small = compress(model, plan, freqs=counts)
    path = tmp_path / "m.safetensors"
    save_file(export_tensors(small), str(path), metadata=FILE_METADATA)
    analytic = plan_stored_bytes(sites, parse_plan(plan), counts, ModelFile.of(model))
    assert os.path.getsize(path) == analytic == stored_bytes(small)
    assert "head.bias" in export_tensors(small)  # every method keeps the tied output layer's bias here


# --- budgets --------------------------------------------------------------------------------
def _between_tensors_and_file(sites, plan, model_file) -> int:
    """A limit the plan's tensors fit but its file (header included) does not."""
    tensors = specs_bytes(plan_specs(sites, parse_plan(plan), None, model_file))
    return (tensors + plan_stored_bytes(sites, parse_plan(plan), None, model_file)) // 2


def test_a_plan_fitted_to_a_tight_budget_exports_a_file_within_it(dense, tmp_path):
    sites, model_file = discover_sites(dense), ModelFile.of(dense)
    base = config_from_dict({"method": "lowrank", "bits": 8})
    first = uniform_plan(base, sites, dense_bytes(dense) // 6, None, model_file)
    limit = _between_tensors_and_file(sites, first, model_file)  # counting tensors alone would keep `first`
    plan = uniform_plan(base, sites, limit, None, model_file)
    assert plan is not None and plan != first
    small = compress(dense, plan)
    save_compressed(small, plan, tmp_path, dense.meta, {})
    assert os.path.getsize(tmp_path / "model.safetensors") <= limit


def test_a_repaired_plan_exports_a_file_within_the_budget(dense, tmp_path):
    sites, model_file = discover_sites(dense), ModelFile.of(dense)
    plan = parse_plan({s.name: {"method": "quant", "bits": 8} for s in sites})
    limit = _between_tensors_and_file(sites, plan, model_file)
    fixed = repair(plan, sites, limit, model_file=model_file)
    assert fixed is not None and fixed != plan
    small = compress(dense, fixed)
    save_compressed(small, fixed, tmp_path, dense.meta, {})
    assert os.path.getsize(tmp_path / "model.safetensors") <= limit


def test_the_knapsack_bound_adds_up_over_sites_and_is_never_below_the_file(dense):
    sites = discover_sites(dense)
    model_file = ModelFile.of(dense)
    options = [
        {"method": "lowrank", "rank": 3, "bits": 4},
        {"method": "quant", "bits": 6, "group_size": 5},
        {"method": "prune", "density": 0.2, "bits": 8},
    ]
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        choice = torch.randint(len(options) + 1, (len(sites),), generator=g).tolist()
        plan = parse_plan({s.name: options[c] for s, c in zip(sites, choice) if c < len(options)})
        bound = plan_bytes_bound(sites, plan, None, model_file)
        added = fixed_bytes(sites, model_file) + sum(
            site_cost(sites, s.name, plan[s.name], model_file, None) if s.name in plan else s.dense_bytes for s in sites
        )
        assert added == bound >= plan_stored_bytes(sites, plan, None, model_file)
        assert bound - plan_stored_bytes(sites, plan, None, model_file) < 40 * len(model_file.specs) + 64
