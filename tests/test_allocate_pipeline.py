"""allocate(): profile -> knapsack -> joint refinement on a tiny LM; plans fit and losses are real."""

from __future__ import annotations

import json
import math

import pytest

from autoshrink.allocate import allocate
from autoshrink.allocate.profile import option_key
from autoshrink.errors import UserError
from autoshrink.methods import config_from_dict
from autoshrink.methods.lowrank import LowRankConfig
from autoshrink.methods.quant import QuantConfig
from autoshrink.models.discover import discover_sites
from autoshrink.models.training import evaluate_perplexity
from autoshrink.plan import ModelFile, compress, dense_bytes, plan_stored_bytes, plan_to_json, stored_bytes

from allocate_fixtures import trained_lstm

BASES = [LowRankConfig(bits=8), QuantConfig()]
MAX_EVALS = 12  # joint evaluations the fixture's allocation may spend


@pytest.fixture(scope="module")
def allocated(tmp_path_factory):
    model, _, valid = trained_lstm()
    limit = dense_bytes(model) // 3
    path = tmp_path_factory.mktemp("alloc") / "profile.csv"
    result = allocate(model, valid, BASES, limit, levels=5, max_evals=MAX_EVALS, profile_path=path, progress=False)
    return model, valid, limit, path, result


def test_every_plan_fits_the_limit_and_its_joint_loss_is_the_real_one(allocated):
    model, valid, limit, _, result = allocated
    sites = discover_sites(model)
    dense = math.log(evaluate_perplexity(model, valid))
    assert result.dense_loss == pytest.approx(dense, abs=1e-5)
    # Every distinct plan the refinement evaluated jointly (at most max_evals): its choice first, then by joint loss.
    # the refinement spends every joint evaluation it may, each on a distinct plan (its moves never run dry here)
    assert len(result.plans) == MAX_EVALS
    assert {p.source for p in result.plans} - {"knapsack"}, "the refinement evaluated plans of its own"
    assert len({json.dumps(plan_to_json(p.plan), sort_keys=True) for p in result.plans}) == len(result.plans)
    rest = [p.joint_loss for p in result.plans[1:]]
    assert rest == sorted(rest)
    for item in result.plans:
        compressed = compress(model, item.plan)
        assert item.bytes == plan_stored_bytes(sites, item.plan) == stored_bytes(compressed) <= limit
    best = compress(model, result.best.plan)
    assert result.best.joint_loss == pytest.approx(math.log(evaluate_perplexity(best, valid)) - dense, abs=1e-5)
    knapsack = next(p for p in result.plans if p.source == "knapsack")
    assert result.best.joint_loss <= knapsack.joint_loss
    assert result.best.plan  # at a 3x limit something is compressed


def test_the_ladder_gives_a_plan_per_fraction_within_it(allocated):
    _, _, limit, _, result = allocated
    fractions = sorted(result.ladder)
    assert fractions == [0.7, 0.8, 0.9, 1.0]
    plans = [result.ladder[f] for f in fractions]
    assert all(p is None or p.bytes <= f * limit for p, f in zip(plans, fractions))
    losses = [p.profile_loss for p in plans if p is not None]
    assert losses == sorted(losses, reverse=True)  # more bytes, less summed loss


def test_a_rerun_reuses_the_profile_and_exact_options_are_measured_as_given(allocated, monkeypatch):
    model, valid, limit, path, result = allocated
    from autoshrink.allocate import profile as _  # noqa: F401  (the module is loaded)
    import sys

    module = sys.modules["autoshrink.allocate.profile"]
    calls = []
    real = module.build_site
    monkeypatch.setattr(module, "build_site", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    again = allocate(model, valid, BASES, limit, levels=5, max_evals=2, profile_path=path, progress=False)
    assert calls == [] and len(again.table) == len(result.table)
    assert len(again.plans) == 2  # the refinement spends max_evals, and no more, on plans evaluated jointly
    exact = {"decoder": [LowRankConfig(rank=2)], "rnn.1.hh": [QuantConfig(bits=4)]}
    only = allocate(model, valid, exact, dense_bytes(model), max_evals=2, progress=False)
    assert sorted(only.table["site"]) == ["decoder", "rnn.1.hh"]


def test_a_limit_below_any_plan_is_a_user_error():
    model, _, valid = trained_lstm()
    with pytest.raises(UserError, match="no plan"):
        allocate(model, valid, [QuantConfig()], 3000, levels=3, progress=False)


def test_level_caps_leave_room_for_every_other_site_at_its_cheapest():
    from autoshrink.allocate.levels import site_options
    from autoshrink.allocate.pipeline import fixed_bytes, level_caps, site_cost

    model, _, _ = trained_lstm()
    sites = discover_sites(model)
    model_file = ModelFile.of(model)
    capacity = dense_bytes(model) // 3 - fixed_bytes(sites, model_file)
    options = site_options(sites, BASES, levels=4)
    caps = level_caps(sites, options, capacity, model_file, None)
    cheapest = {n: min(site_cost(sites, n, c, model_file, None) for c in cfgs) for n, cfgs in options.items()}
    for name, cap in caps.items():
        # An option of `cap` method bytes (plus its bias) and every other site at its cheapest fill the capacity.
        site = next(s for s in sites if s.name == name)
        bias = 4 * site.shape[0] if site.bias else 0
        assert cap + bias + sum(cheapest.values()) - cheapest[name] == capacity


def test_ladder_plans_carry_their_joint_loss(allocated):
    model, valid, _, _, result = allocated
    dense = math.log(evaluate_perplexity(model, valid))
    for plan in result.ladder.values():
        if plan is not None:
            real = math.log(evaluate_perplexity(compress(model, plan.plan), valid)) - dense
            assert plan.joint_loss == pytest.approx(real, abs=1e-5)


@pytest.mark.parametrize("ratio", [25, 50, 100])
def test_wherever_a_uniform_plan_fits_every_site_keeps_options_and_a_plan_fits(ratio):
    """Levels start where the method can (per-row scales give low-rank a floor) and reach down to
    half the share of its bytes a site may keep: at 100x the sites keep about 1%, under the default
    smallest level, and the levels once left no plan within the limit."""
    from autoshrink.allocate.knapsack import Option, solve_ladder
    from autoshrink.allocate.pipeline import capped_options, fixed_bytes, site_cost
    from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
    from autoshrink.plan.fit import uniform_plan

    model = LSTMLM(LSTMLMConfig(vocab_size=10000, emb_dim=256, hidden=256, layers=2, dropout=0.0))  # sizes only
    sites = discover_sites(model)
    model_file = ModelFile.of(model)
    limit = dense_bytes(model) // ratio
    base = LowRankConfig(bits=4)
    assert uniform_plan(base, sites, limit, None, model_file) is not None  # the method alone reaches the ratio
    capacity = limit - fixed_bytes(sites, model_file)
    options = capped_options(sites, [base], capacity, model_file, None, levels=5)
    assert all(options[s.name] for s in sites if s.tied_with is None)
    knap = {n: [Option(c, site_cost(sites, n, c, model_file, None), 0.0) for c in cfgs] for n, cfgs in options.items()}
    assert solve_ladder(knap, [capacity])[0] is not None


def test_hedges_are_the_best_plans_without_each_method_of_the_best_one(allocated):
    model, valid, limit, _, result = allocated
    sites = discover_sites(model)
    dense = math.log(evaluate_perplexity(model, valid))
    used = {c.method for c in result.best.plan.values()}
    assert result.hedges, "the fixture's best plan uses a method that another plan can do without"
    assert {h.source for h in result.hedges} <= {f"knapsack without {m}" for m in used}
    for hedge in result.hedges:
        left_out = hedge.source.removeprefix("knapsack without ")
        assert all(c.method != left_out for c in hedge.plan.values())
        assert hedge.bytes == plan_stored_bytes(sites, hedge.plan) <= limit
        joint = math.log(evaluate_perplexity(compress(model, hedge.plan), valid)) - dense
        assert hedge.joint_loss == pytest.approx(joint, abs=1e-5)
    losses = [h.joint_loss for h in result.hedges]
    assert losses == sorted(losses)


def test_toward_uniform_runs_from_the_plan_itself_to_the_uniform_plan():
    from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
    from autoshrink.plan.fit import toward_uniform, uniform_plan

    model = LSTMLM(LSTMLMConfig(vocab_size=2000, emb_dim=64, hidden=64, layers=2, dropout=0.0))  # sizes only
    sites = discover_sites(model)
    model_file = ModelFile.of(model)
    limit = dense_bytes(model) // 10
    recurrent = [s.name for s in sites if s.role == "recurrent"]
    uniform = uniform_plan(LowRankConfig(bits=4), sites, limit, None, model_file)
    # Unequal ranks on the LSTM matrices, the vocabulary as the uniform plan has it: within the limit.
    unequal = {**uniform, **{n: LowRankConfig(bits=4, rank=r) for n, r in zip(recurrent, (2, 2, 2, 12))}}
    assert plan_stored_bytes(sites, unequal, None, model_file) <= limit
    assert toward_uniform(unequal, 0.0, sites, limit, None, model_file) == unequal
    assert toward_uniform(unequal, 1.0, sites, limit, None, model_file) == uniform
    halfway = toward_uniform(unequal, 0.5, sites, limit, None, model_file)
    ranks = [halfway[n].rank for n in recurrent]
    # The unequal plan left bytes unspent, so the share the halfway plan aims at is above the
    # uniform plan's; the order of the sites' sizes stays, their spread narrows.
    assert 2 < ranks[0] == ranks[1] == ranks[2] < ranks[3] and ranks[3] / ranks[0] < 12 / 2
    assert plan_stored_bytes(sites, unequal, None, model_file) < plan_stored_bytes(sites, halfway, None, model_file)
    assert plan_stored_bytes(sites, halfway, None, model_file) <= limit
    # A site at its method's smallest size (2-bit quantisation, well above a uniform share) keeps it
    # and the others still move: at 25x the allocation's 2-bit input matrices left no halfway plan.
    coarse = {recurrent[0]: QuantConfig(bits=2), **{n: unequal[n] for n in recurrent[1:]}}  # the LSTM only
    limit_coarse = plan_stored_bytes(sites, coarse, None, model_file)
    moved = toward_uniform(coarse, 0.5, sites, limit_coarse, None, model_file)
    assert moved is not None and moved[recurrent[0]] == QuantConfig(bits=2)
    assert moved[recurrent[1]].rank > 2 and plan_stored_bytes(sites, moved, None, model_file) <= limit_coarse


def test_a_site_s_smallest_setting_is_its_size_knob_at_the_fewest_bytes():
    from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
    from autoshrink.plan.fit import smallest_setting

    model = LSTMLM(LSTMLMConfig(vocab_size=2000, emb_dim=64, hidden=64, layers=2, dropout=0.0))  # sizes only
    site = next(s for s in discover_sites(model) if s.role == "recurrent")
    assert smallest_setting(site, QuantConfig(bits=3)) == QuantConfig(bits=2)
    assert smallest_setting(site, LowRankConfig(bits=4, rank=12)) == LowRankConfig(bits=4, rank=1)


def test_the_halfway_plan_survives_allocation_json(allocated, tmp_path):
    from autoshrink.allocate.pipeline import Allocated
    from autoshrink.search import run_folder

    model, _, _, _, result = allocated
    run_folder.write_allocation(tmp_path, result, discover_sites(model), 100)
    info = run_folder.read_allocation(tmp_path)
    assert Allocated.from_dict(info["toward_uniform"]) == result.toward_uniform


def test_the_halfway_plan_keeps_the_best_plan_s_methods_at_sizes_nearer_a_uniform_share(allocated):
    from autoshrink.plan.bytes import method_bytes

    model, valid, limit, _, result = allocated
    sites = discover_sites(model)
    by_name = {s.name: s for s in sites}
    halfway = result.toward_uniform
    assert halfway is not None and halfway.plan != result.best.plan
    assert halfway.source == "halfway to uniform sizes" and halfway.profile_loss is None
    assert halfway.bytes == plan_stored_bytes(sites, halfway.plan) <= limit
    dense = math.log(evaluate_perplexity(model, valid))
    joint = math.log(evaluate_perplexity(compress(model, halfway.plan), valid)) - dense
    assert halfway.joint_loss == pytest.approx(joint, abs=1e-5)
    assert halfway.plan.keys() == result.best.plan.keys()

    # Each site keeps its method; the spread of bytes per dense byte over the sites narrows.
    def shares(plan):
        return [method_bytes(by_name[n], c) / by_name[n].dense_bytes for n, c in plan.items()]

    assert all(halfway.plan[n].method == c.method for n, c in result.best.plan.items())
    assert max(shares(halfway.plan)) - min(shares(halfway.plan)) < max(shares(result.best.plan)) - min(
        shares(result.best.plan)
    )


def test_zoom_profiles_sizes_next_to_the_first_knapsack_choice_and_the_plan_may_take_them(tmp_path):
    from autoshrink.allocate.levels import same_base

    model, _, valid = trained_lstm()
    limit = dense_bytes(model) // 3
    bases = [LowRankConfig(bits=8)]  # sized by rank (the fixture's quantisation is sized by its bits: no zoom)
    coarse = allocate(model, valid, bases, limit, levels=5, max_evals=2, zoom=0, progress=False)
    fine = allocate(model, valid, bases, limit, levels=5, max_evals=2, progress=False)
    known = {(r["site"], r["knobs"]) for r in coarse.table.to_dict("records")}
    extra = [r for r in fine.table.to_dict("records") if (r["site"], r["knobs"]) not in known]
    assert extra, "the zoom measured no new size"
    first = coarse.ladder[1.0].plan  # the knapsack's plan over the coarse levels
    for row in extra:
        config = config_from_dict(json.loads(row["knobs"]))
        assert same_base(config, first[row["site"]])  # only the chosen method and width, resized
    assert fine.ladder[1.0].profile_loss <= coarse.ladder[1.0].profile_loss + 1e-12  # more options, no worse
    # the knapsack's indices still name the options they cost: its loss is the rows' sum
    loss = {(r["site"], r["knobs"]): r["loss_delta"] for r in fine.table.to_dict("records")}
    plan = fine.ladder[1.0].plan
    assert fine.ladder[1.0].profile_loss == pytest.approx(sum(loss[(s, option_key(c))] for s, c in plan.items()))
    assert any((s, option_key(c)) in {(r["site"], r["knobs"]) for r in extra} for s, c in plan.items())
    # allocation.json keeps the zoom's sizes; a resumed search merges them into its space's options
    from autoshrink.search import allocation as search_allocation
    from autoshrink.search.run_folder import read_allocation, write_allocation

    write_allocation(tmp_path, fine, discover_sites(model), tokens=len(valid))
    zoomed = search_allocation._zoomed(read_allocation(tmp_path))
    assert zoomed == fine.zoomed and sum(map(len, zoomed.values())) == len(extra)
    coarse_options = {site: [] for site in zoomed}
    assert search_allocation._merged(coarse_options, zoomed) == zoomed
    assert search_allocation._merged(zoomed, zoomed) == zoomed  # nothing twice
    dropped = allocate(
        model, valid, bases, limit, levels=5, max_evals=2, progress=False, admit=lambda site, config: None
    )
    assert len(dropped.table) == len(coarse.table)  # what the caller does not admit is not measured
