"""Warm start: a new search first tries each single method on every site, fitted to the budget."""

from __future__ import annotations

import optuna
import pytest

from autoshrink.api import load
from autoshrink.plan.repair import repair
from autoshrink.models import discover_sites
from autoshrink.plan import ModelFile, dense_bytes, plan_stored_bytes
from autoshrink.search.warm_start import enqueue_uniform_seeds, uniform_seeds
from autoshrink.search.space import load_space, parse_space, sample_plan

from test_search import SPACE, _search


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model = load(str(tiny_model_dir))
    return model, discover_sites(model)


def test_seeds_are_one_method_on_every_site_within_the_space_and_the_budget(tiny):
    model, sites = tiny
    space = parse_space(__import__("yaml").safe_load(SPACE))
    limit = dense_bytes(model) // 3
    seeds = uniform_seeds(space, sites, limit, model.vocab.freqs, ModelFile.of(model))
    # prune is not offered on the vocabulary sites: only methods every site may take are seeds
    assert [m for m, _ in seeds] == ["lowrank", "quant"]
    for method, params in seeds:
        plan = sample_plan(optuna.trial.FixedTrial(params), space, sites)
        assert {cfg.method for cfg in plan.values()} == {method}
        assert set(plan) == {s.name for s in sites if s.tied_with is None}
        for name, value in params.items():  # every value is one the space allows
            site, m, *knob = name.split("/")
            if knob:
                k = space.roles[next(s.role for s in sites if s.name == site)][m][knob[0]]
                assert value in k.choices if k.choices else k.low <= value <= k.high
        fixed = repair(plan, sites, limit, model.vocab.freqs, model_file=ModelFile.of(model))
        assert plan_stored_bytes(sites, fixed, model.vocab.freqs, ModelFile.of(model)) <= limit


WIDTHS_SPACE = """
roles:
  embedding: &all
    lowrank: {rank: {low: 2, high: 16}, bits: [4, 8, 16]}
    quant: {bits: [2, 4]}
  softmax: *all
  recurrent: *all
"""


def _bits_of(seed: dict) -> set:
    return {v for k, v in seed.items() if k.endswith("/lowrank/bits")}


def test_a_score_picks_each_seeds_storage_width_and_fewer_bits_buy_larger_ranks(tiny):
    model, sites = tiny
    space = parse_space(__import__("yaml").safe_load(WIDTHS_SPACE))
    limit, freqs, mf = dense_bytes(model) // 3, model.vocab.freqs, ModelFile.of(model)
    scored = []

    def prefers(bits):
        def score(plan):
            widths = {cfg.bits for cfg in plan.values()}
            scored.append(widths)
            return 0.0 if widths == {bits} else 1.0

        return score

    by_width = {}
    for bits in (4, 16):
        seeds = dict(uniform_seeds(space, sites, limit, freqs, mf, prefers(bits)))
        assert _bits_of(seeds["lowrank"]) == {bits}
        by_width[bits] = sum(v for k, v in seeds["lowrank"].items() if k.endswith("/rank"))
    assert by_width[4] > by_width[16]
    assert {frozenset(w) for w in scored} == {frozenset({b}) for b in (4, 8, 16)}  # every width was scored
    assert _bits_of(dict(uniform_seeds(space, sites, limit, freqs, mf))["lowrank"]) == {8}  # no score: 8 bits


def test_best_width_keeps_the_lowest_score_and_reports_every_width_tried(tiny):
    from autoshrink.methods import config_class
    from autoshrink.plan.fit import best_width

    model, sites = tiny
    limit, mf = dense_bytes(model) // 3, ModelFile.of(model)
    losses = {4: 2.0, 8: 1.0, 16: 3.0}
    plan, tried = best_width(
        config_class("lowrank")(), (4, 8, 16), sites, limit, lambda p: losses[next(iter(p.values())).bits], None, mf
    )
    assert [(b, s) for b, s, _ in tried] == [(4, 2.0), (8, 1.0), (16, 3.0)]
    assert {cfg.bits for cfg in plan.values()} == {8}
    assert plan_stored_bytes(sites, plan, None, mf) <= limit
    none, tried = best_width(config_class("lowrank")(), (16,), sites, 10, lambda p: 0.0, None, mf)
    assert none is None and tried == []


def test_the_default_space_seeds_low_rank_pruning_and_quantisation_on_the_reference_model():
    model = load("kjv-lstm")
    sites = discover_sites(model)
    seeds = uniform_seeds(
        load_space("search_spaces/default.yaml"),
        sites,
        dense_bytes(model) // 10,
        model.vocab.freqs,
        ModelFile.of(model),
    )
    assert sorted(m for m, _ in seeds) == ["lowrank", "prune", "quant"]
    quant = dict(seeds)["quant"]
    assert {v for k, v in quant.items() if k.endswith("/bits")} == {3}  # 3-bit codes just meet 10x


def test_a_new_search_runs_the_seeds_first_and_a_resumed_one_does_not_repeat_them(
    tiny_model_dir, text_file, space_file, tmp_path
):
    run = tmp_path / "run"
    result = _search(tiny_model_dir, text_file, space_file, run, trials=2, budget="3x", allocate=False)
    first = sorted(result.study.get_trials(), key=lambda t: t.number)
    assert [t.user_attrs.get("warm_start") for t in first] == ["uniform lowrank", None]  # at most half the trials
    assert {cfg["method"] for cfg in first[0].user_attrs["plan"].values()} == {"lowrank"}
    again = _search(tiny_model_dir, text_file, space_file, run, trials=3, budget="3x", allocate=False)
    assert sum("warm_start" in t.user_attrs for t in again.study.get_trials()) == 1
    assert enqueue_uniform_seeds(again.study, [("lowrank", {})]) == 0  # a study with history gets none


def test_no_warm_start_samples_from_the_first_trial(tiny_model_dir, text_file, space_file, tmp_path):
    result = _search(tiny_model_dir, text_file, space_file, tmp_path / "run", trials=1, budget="3x", warm_start=False)
    assert "warm_start" not in result.study.get_trials()[0].user_attrs


def test_a_resumed_search_does_not_draw_the_same_plans_again(tiny_model_dir, text_file, space_file, tmp_path):
    run = tmp_path / "run"
    _search(tiny_model_dir, text_file, space_file, run, trials=2, warm_start=False, sampler="nsga2")
    again = _search(tiny_model_dir, text_file, space_file, run, trials=4, warm_start=False, sampler="nsga2")
    trials = sorted(again.study.get_trials(), key=lambda t: t.number)
    assert [t.params for t in trials[2:]] != [t.params for t in trials[:2]]


def test_a_method_whose_defaults_cannot_reach_the_budget_is_seeded_with_its_ranges_at_the_top():
    # GroupReduce's default 4 blocks leave the head block dense: 6.6x on the vocabulary needs 10
    model = load("kjv-lstm")
    sites = discover_sites(model)
    vocab = sum(s.dense_bytes for s in sites if s.is_vocab)
    limit = int(ModelFile.of(model).bytes - vocab + vocab / 6.6)
    seeds = dict(
        uniform_seeds(
            load_space("search_spaces/vocab-only-fp32.yaml"), sites, limit, model.vocab.freqs, ModelFile.of(model)
        )
    )
    assert seeds["groupreduce"]["decoder/groupreduce/blocks"] == 10
    assert seeds["lowrank"]["decoder/method"] == "lowrank"


def test_the_allocated_plans_run_first_then_the_uniform_controls(tiny_model_dir, text_file, space_file, tmp_path):
    """DESIGN's order: allocated plans (profile + knapsack), then the single-method controls, then
    the sampler; the allocated plans are within the budget and inside the space."""
    result = _search(tiny_model_dir, text_file, space_file, tmp_path / "run", trials=4, budget="3x")
    trials = sorted((t for t in result.study.get_trials() if "steps" in t.user_attrs), key=lambda t: t.number)
    origins = [
        ("allocated" if "allocated" in t.user_attrs else "warm" if "warm_start" in t.user_attrs else "sampled")
        for t in trials
    ]
    assert origins[0] == "allocated" and "warm" in origins
    assert origins.index("warm") > max(i for i, o in enumerate(origins) if o == "allocated")
    assert (tmp_path / "run" / "profile.csv").is_file()
    info = __import__("json").loads((tmp_path / "run" / "run.json").read_text())
    for t in trials:
        assert t.user_attrs["stored_bytes"] <= info["max_bytes"]


def test_the_search_seeds_its_controls_at_the_width_its_untrained_score_prefers(
    tiny_model_dir, text_file, tmp_path, monkeypatch
):
    from autoshrink.search import controller

    space = tmp_path / "space.yaml"
    space.write_text(WIDTHS_SPACE)
    real = controller.untrained_ppl
    picked = []

    def prefer_16(ctx):
        ppl = real(ctx)  # the real scorer runs too: a perplexity of the built plan

        def score(plan):
            picked.append(ppl(plan))
            return 0.0 if {cfg.bits for cfg in plan.values()} == {16} else 1.0

        return score

    monkeypatch.setattr(controller, "untrained_ppl", prefer_16)
    result = _search(tiny_model_dir, text_file, space, tmp_path / "run", trials=2, budget="3x", allocate=False)
    seeded = [t for t in result.study.get_trials() if t.user_attrs.get("warm_start") == "uniform lowrank"]
    assert len(seeded) == 1 and {cfg["bits"] for cfg in seeded[0].user_attrs["plan"].values()} == {16}
    assert picked and all(p > 1.0 for p in picked)


def test_a_scope_space_fits_its_seeds_on_the_scoped_sites_alone(tiny):
    """A space that leaves the vocabulary dense (the lstm-25x row): the seeds spend only the
    recurrent sites' share, so the seeded plan meets the limit as drawn, with no repair."""
    model, sites = tiny
    space = parse_space(
        __import__("yaml").safe_load(
            "roles:\n  recurrent:\n    lowrank: {rank: {low: 2, high: 64}, bits: [4, 8, 16]}\n"
        )
    )
    mf = ModelFile.of(model)
    recurrent = sum(s.dense_bytes for s in sites if s.role == "recurrent")
    limit = int(mf.bytes - recurrent + recurrent / 5)
    for score in (None, lambda plan: 0.0):
        (method, params), *_ = uniform_seeds(space, sites, limit, model.vocab.freqs, mf, score)
        plan = sample_plan(optuna.trial.FixedTrial(params), space, sites)
        compressed = {n: cfg for n, cfg in plan.items() if cfg.method != "dense"}
        assert {s.role for s in sites if s.name in compressed} == {"recurrent"}
        assert plan_stored_bytes(sites, plan, model.vocab.freqs, mf) <= limit


def test_each_width_is_scored_as_the_seed_will_train_with_the_space_capping_its_rank(tiny):
    model, sites = tiny
    space = parse_space(
        __import__("yaml").safe_load(
            "roles:\n  embedding: &all\n    lowrank: {rank: {low: 2, high: 3}, bits: [4, 16]}\n"
            "  softmax: *all\n  recurrent: *all\n"
        )
    )
    seen = []

    def score(plan):
        seen.append(max(cfg.rank for cfg in plan.values()))
        return 0.0

    uniform_seeds(space, sites, dense_bytes(model) // 3, model.vocab.freqs, ModelFile.of(model), score)
    assert seen and max(seen) <= 3  # 4 bits would fit larger ranks; the seed trains them capped at 3


def test_allocated_trials_are_the_best_plan_then_its_hedges_then_the_ladder():
    import pandas as pd

    from autoshrink.allocate import Allocation
    from autoshrink.allocate.pipeline import Allocated
    from autoshrink.methods.lowrank import LowRankConfig
    from autoshrink.methods.quant import QuantConfig
    from autoshrink.search.allocation import allocated_plans

    def entry(rank, source, loss=0.1):
        return Allocated({"a": LowRankConfig(rank=rank), "b": QuantConfig(bits=4)}, 100, loss, loss, source)

    best = entry(8, "knapsack")
    hedges = [entry(7, "knapsack without quant"), entry(8, "knapsack without lowrank"), entry(6, "third")]
    ladder = {0.9: entry(5, "knapsack at 0.9 of the limit"), 1.0: best}
    result = Allocation([best], ladder, pd.DataFrame(), 0.0, 100, hedges=hedges)
    sources = [s for s, _ in allocated_plans(result, 5, lambda _: None)]
    # the hedge equal to the best plan is not trained twice; at most two hedges; then the ladder
    assert sources == [
        "allocation (knapsack)",
        "allocation hedge (knapsack without quant)",
        "allocation hedge (third)",
        "knapsack at 0.9 of the limit",
    ]
    assert [s for s, _ in allocated_plans(result, 2, lambda _: None)] == sources[:2]
    # The best plan moved halfway to uniform sizes comes second, before the hedges (still two of them).
    result.toward_uniform = entry(9, "halfway to uniform sizes")
    assert [s for s, _ in allocated_plans(result, 5, lambda _: None)] == [
        "allocation (knapsack)",
        "allocation halfway to uniform sizes",
        *sources[1:],
    ]


def test_the_profile_offers_3_bits_only_where_the_space_does():
    from autoshrink.search.allocation import profile_bases
    from autoshrink.search.space import load_space

    default, mixed = load_space("search_spaces/default.yaml"), load_space("search_spaces/mixed-width.yaml")
    widths = lambda space, role: {(c.method, c.bits) for c in profile_bases(space, role)}  # noqa: E731
    assert ("lowrank", 3) in widths(mixed, "embedding") and ("groupreduce", 3) in widths(mixed, "softmax")
    assert ("lowrank", 3) not in widths(mixed, "recurrent")
    assert not any(bits == 3 for role in ("embedding", "softmax", "recurrent") for _, bits in widths(default, role))
    assert widths(mixed, "recurrent") == widths(default, "recurrent")


def test_a_seed_is_fitted_with_each_roles_own_storage_knobs(tiny):
    """A space that stores the vocabulary's U transposed (u_groups) and the LSTM's in rows: each
    site's rank is fitted under its own role's layout, so the seed spends the budget (fitted
    under one layout and moved to the other, the vocabulary would leave its per-row scales'
    bytes unspent)."""
    model, sites = tiny
    space = parse_space(
        __import__("yaml").safe_load(
            "roles:\n  embedding: &vocab\n    lowrank: {rank: {low: 1, high: 64}, bits: [8], u_groups: 64}\n"
            "  softmax: *vocab\n  recurrent:\n    lowrank: {rank: {low: 1, high: 64}, bits: [8], u_groups: 0}\n"
        )
    )
    mf = ModelFile.of(model)
    limit = dense_bytes(model) // 8
    (method, params), *_ = uniform_seeds(space, sites, limit, model.vocab.freqs, mf)
    plan = sample_plan(optuna.trial.FixedTrial(params), space, sites)
    assert {n: cfg.u_groups for n, cfg in plan.items()} == {
        s.name: 64 if s.is_vocab else 0 for s in sites if s.tied_with is None
    }
    assert plan_stored_bytes(sites, plan, model.vocab.freqs, mf) <= limit
    grown = {n: cfg.replace(rank=cfg.rank + 1) for n, cfg in plan.items()}
    assert plan_stored_bytes(sites, grown, model.vocab.freqs, mf) > limit  # nothing left unspent


def test_the_profile_measures_every_storage_layout_a_space_offers():
    from autoshrink.search.allocation import profile_bases
    from autoshrink.search.space import load_space, parse_space

    space = parse_space(
        __import__("yaml").safe_load(
            "roles:\n  recurrent:\n    lowrank: {rank: {low: 4, high: 96}, bits: [4, 8], u_groups: [0, 256]}\n"
        )
    )
    assert {(c.bits, c.u_groups) for c in profile_bases(space, "recurrent")} == {(4, 0), (4, 256), (8, 0), (8, 256)}
    default = load_space("search_spaces/default.yaml")
    assert {c.u_groups for c in profile_bases(default, "softmax") if c.method in ("lowrank", "groupreduce")} == {128}
    assert {c.u_groups for c in profile_bases(default, "recurrent") if c.method == "lowrank"} == {0, 128}


def test_the_profile_measures_groupreduce_at_its_default_and_both_ends_of_its_block_range():
    """At the default block count alone (4) GroupReduce's floor is a quarter of the vocabulary
    kept dense: a vocabulary site offered it one level, and the knapsack never weighed it."""
    from autoshrink.search.allocation import profile_bases
    from autoshrink.search.space import load_space, parse_space

    default = load_space("search_spaces/default.yaml")
    assert {c.blocks for c in profile_bases(default, "softmax") if c.method == "groupreduce"} == {2, 4, 10}
    fixed = parse_space(
        __import__("yaml").safe_load("roles:\n  softmax:\n    groupreduce: {blocks: 6, rank: {low: 2, high: 64}}\n")
    )
    assert {c.blocks for c in profile_bases(fixed, "softmax")} == {6}  # a fixed knob stays as the space fixes it
