"""The reference benchmark's parts: uniform single-method plans, entrants, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoshrink.bench import reference, reference_main
from autoshrink.plan.fit import uniform_plan
from autoshrink.bench.reference import ROWS, Row, Setup, entrant_dir, result_of, work_items
from autoshrink.bench.reference_report import markdown
from autoshrink.final.export import file_bytes
from autoshrink.methods import config_from_dict
from autoshrink.models import training
from autoshrink.models.schedule import COOLDOWN
from autoshrink.plan import plan_stored_bytes


@pytest.mark.parametrize("method", ["lowrank", "prune", "tt", "kronecker"])
@pytest.mark.parametrize("ratio", [2, 3])
def test_uniform_plan_just_meets_the_limit_on_every_site(bench_setup, method, ratio):
    # The tiny model's LSTM biases alone are 1/40 of it: its budgets are modest ones.
    limit = bench_setup.dense_bytes // ratio
    freqs = bench_setup.lm.vocab.freqs
    plan = uniform_plan(config_from_dict({"method": method}), bench_setup.sites, limit, freqs, bench_setup.model_file)
    assert plan is not None and set(plan) == {s.name for s in bench_setup.sites if s.tied_with is None}
    assert {cfg.method for cfg in plan.values()} == {method}
    nbytes = plan_stored_bytes(bench_setup.sites, plan, freqs, bench_setup.model_file)
    assert nbytes <= limit
    assert nbytes > 0.6 * limit  # fitted to the limit, not merely under it


def test_uniform_plan_keeps_sites_outside_the_scope_dense(bench_setup):
    row = Row("lstm", 5, frozenset({"recurrent"}), "", "LSTM")
    plan = uniform_plan(
        config_from_dict({"method": "lowrank"}),
        bench_setup.sites,
        bench_setup.max_bytes(row),
        bench_setup.lm.vocab.freqs,
        bench_setup.model_file,
        row.roles,
    )
    recurrent = {s.name for s in bench_setup.sites if s.role == "recurrent"}
    assert set(plan) == recurrent
    lstm_stored = plan_stored_bytes(bench_setup.sites, plan, bench_setup.lm.vocab.freqs, bench_setup.model_file) - (
        bench_setup.model_bytes - bench_setup.scope_bytes(row)
    )
    assert bench_setup.scope_bytes(row) / lstm_stored >= 5


def test_a_vocabulary_method_cannot_reach_a_whole_model_budget_the_dense_lstm_exceeds(bench_setup):
    lstm = sum(s.dense_bytes for s in bench_setup.sites if s.role == "recurrent")
    limit = lstm // 2  # below what the dense LSTM layers alone store
    assert (
        uniform_plan(
            config_from_dict({"method": "groupreduce"}),
            bench_setup.sites,
            limit,
            bench_setup.lm.vocab.freqs,
            bench_setup.model_file,
        )
        is None
    )


def test_work_items_put_the_dense_control_first_and_every_entrant_of_a_row(bench_setup):
    items = work_items(["25x"])
    assert items[0] == ("dense", "dense")
    assert [e for _, e in items[1:]] == list(ROWS["25x"].singles) + ["small-dense", "autoshrink"]
    converged = work_items(["25x", "50x", "lstm-25x"], "converged")
    assert converged == [
        ("dense", "dense"),
        ("25x", "autoshrink"),  # first: a best uniform plan it trained is taken, not trained again
        ("25x", "best-uniform"),
        ("25x", "small-dense"),
        ("lstm-25x", "autoshrink"),
        ("lstm-25x", "best-uniform"),
    ]


def test_entrants_train_export_and_land_in_the_report(bench_setup, tmp_path):
    row = Row("3x", 3, None, "search_spaces/default.yaml", "whole model", reference.SINGLES)
    dense = reference.run_dense(bench_setup)
    single = reference.run_single(bench_setup, row, "lowrank")
    out = bench_setup.work / "3x" / "lowrank"
    assert single["stored_bytes"] == file_bytes(out) <= bench_setup.max_bytes(row)
    assert single["steps"] == dense["steps"] == 2
    assert reference.run_single(bench_setup, row, "lightrnn") == {
        "unreachable": "lightrnn alone cannot reach 3x on the whole model"
    }
    assert result_of(bench_setup.work, "3x", "lowrank") == json.loads((out / "bench.json").read_text())
    text = markdown(bench_setup, [row], "python -m autoshrink.bench", tmp_path)
    line = next(x for x in text.splitlines() if x.startswith("| 3x | lowrank |"))
    increase = 100 * (single["test_ppl"] / dense["test_ppl"] - 1)
    assert f"{single['test_ppl']:.2f} | {increase:+.1f}% | {single['stored_bytes']:,} |" in line
    assert "| 3x | lightrnn | cannot reach" in text
    assert "| 3x | **autoshrink** | not run yet |" in text  # the search has not run: said, not hidden
    assert "| 3x | not run |" in text  # the goals table


def test_bad_part_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        reference_main.main(["--part", "3/2", "--report-only"])
    assert e.value.code == 2


@pytest.mark.slow
def test_the_whole_benchmark_on_a_tiny_model(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "results"
    assert (
        reference_main.main(
            [
                "--model",
                str(tiny_model_dir),
                "--data",
                str(text_file),
                "--rows",
                "10x",
                "--steps",
                "2",
                "--trials",
                "2",
                "--finetune-steps",
                "2",
                "--work",
                str(tmp_path / "w"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = (out / "BENCHMARK.md").read_text()
    assert "not run yet" not in text and "| 10x | **autoshrink** |" in text
    assert (out / "benchmark.png").stat().st_size > 0
    auto = result_of(tmp_path / "w", "10x", "autoshrink")
    limit = Setup(str(tiny_model_dir), 2, 2, 2, tmp_path / "w", data=str(text_file)).max_bytes(ROWS["10x"])
    assert auto["stored_bytes"] == auto["file_bytes"] <= limit
    # the report knows where the trained plan came from (its trial in the search's study)
    from autoshrink.bench.reference_report import searched_origin

    origin = searched_origin(tmp_path / "w", ROWS["10x"], auto)
    assert origin is not None and origin.split()[0] in {"allocation", "knapsack", "uniform", "sampled"}
    # a later search in the folder whose trial of that number trained another plan says nothing of it
    other = {**auto, "plan": {"encoder": {"method": "quant", "bits": 8}}}
    assert searched_origin(tmp_path / "w", ROWS["10x"], other) is None
    label = next(x for x in text.splitlines() if x.startswith("| 10x | **autoshrink**"))
    assert ("(= the uniform " in label) == origin.startswith("uniform "), (origin, label)


def test_a_single_method_is_stored_at_its_best_width(bench_setup):
    from autoshrink.bench.entrants import LAYOUT_GROUPS, STORAGE_BITS, best_storage_plan

    row = Row("3x", 3, None, "search_spaces/default.yaml", "whole model", reference.SINGLES)
    plan, tried = best_storage_plan(bench_setup, row, {"method": "lowrank"})
    # every width reaches 3x with low-rank; below 16 bits U is also tried stored transposed
    assert [(t["bits"], t.get("u_groups", 0)) for t in tried] == [(b, 0) for b in STORAGE_BITS] + [
        (b, g) for g in LAYOUT_GROUPS for b in STORAGE_BITS if b < 16
    ]
    best = min(tried, key=lambda t: t["init_val_ppl"])
    assert {(cfg["bits"], cfg["u_groups"]) for cfg in plan.values()} == {(best["bits"], best.get("u_groups", 0))}
    assert all(t["stored_bytes"] <= bench_setup.max_bytes(row) for t in tried)
    fixed, tried = best_storage_plan(
        bench_setup, row, {"method": "lowrank", "bits": 8}
    )  # a width the row fixes is kept
    assert {t["bits"] for t in tried} == {8} and {cfg["bits"] for cfg in fixed.values()} == {8}


def test_small_dense_is_the_largest_8bit_model_within_the_budget(bench_setup):
    from autoshrink.bench.entrants import _small_model, small_dense, small_dense_plan
    from autoshrink.plan import compress, stored_bytes

    row = Row("6x", 6, None, "search_spaces/default.yaml", "whole model", reference.SINGLES)  # beyond 8 bits' 4x
    model, plan, dim = small_dense(bench_setup, row)
    assert {cfg["bits"] for cfg in plan.values()} == {8}
    assert stored_bytes(compress(model, plan)) <= bench_setup.max_bytes(row)
    bigger = _small_model(bench_setup.dense, dim + 1)
    assert stored_bytes(compress(bigger, small_dense_plan(bigger))) > bench_setup.max_bytes(row)
    assert small_dense(bench_setup, Row("lstm-3x", 3, frozenset({"recurrent"}), "", "LSTM")) is None  # whole model only


def test_new_entrants_record_commit_and_plan_and_the_report_compares_them(bench_setup, tmp_path, monkeypatch):
    from autoshrink.bench import report

    assert bench_setup.commit == report.commit()  # the code the benchmark process imported
    monkeypatch.setattr(reference, "commit", lambda: "a-later-commit")  # committed while the benchmark runs
    row = Row("3x", 3, None, "search_spaces/default.yaml", "whole model", {"lowrank": {"method": "lowrank"}})
    reference.run_dense(bench_setup)
    single = reference.run_single(bench_setup, row, "lowrank")
    small = reference.run_small_dense(bench_setup, row)
    assert small["stored_bytes"] <= bench_setup.max_bytes(row) and small["dims"] >= 1
    for r in (single, small):
        assert (
            r["commit"] == bench_setup.commit
            and r["protocol"] == reference.PROTOCOL
            and r["plan"]
            and r["tier"] == "quick"
        )
    monkeypatch.undo()
    # an autoshrink result whose plan is the uniform one is labelled so
    auto_dir = bench_setup.work / "3x" / "autoshrink"
    auto_dir.mkdir(parents=True, exist_ok=True)
    (auto_dir / "bench.json").write_text(json.dumps({**single, "trials": 1}))
    text = markdown(bench_setup, [row], "python -m autoshrink.bench", tmp_path)
    assert (
        "**autoshrink** (no warm start) (= the uniform lowrank plan)" in text
        or "**autoshrink** (= the uniform lowrank plan)" in text
    )
    goals = [x for x in text.splitlines() if x.startswith("| 3x | ") and x.count("|") == 10]  # the goals table's row
    assert len(goals) == 1 and "| tie |" in goals[0]  # equal test perplexity: neither leads
    assert goals[0].endswith("| no: the uniform lowrank plan |")  # issue 15's goal: a uniform plan never meets it
    assert "best uniform = lowrank" in text and "small dense (" in text
    # a per-site plan: the goal compares its increase over the dense control with the best uniform's
    dense = result_of(bench_setup.work, "dense", "dense")
    per_site = {**single["plan"], next(iter(single["plan"])): {"method": "quant", "bits": 4}}
    for factor in (0.5, 0.95, -0.2):
        ppl = dense["test_ppl"] * (1 + factor * (single["test_ppl"] / dense["test_ppl"] - 1))
        (auto_dir / "bench.json").write_text(json.dumps({**single, "plan": per_site, "test_ppl": ppl, "trials": 1}))
        text = markdown(bench_setup, [row], "python -m autoshrink.bench", tmp_path)
        goals = [x for x in text.splitlines() if x.startswith("| 3x | ") and x.count("|") == 10]
        expected = f"{'yes' if factor <= 0.85 else 'no'} ({factor:.2f}x)"
        if factor < 0:  # below the dense control: said so, not as a negative ratio
            expected = "yes (no worse than the dense control)"
        assert goals[0].endswith(f"| {expected} |"), goals[0]


def test_the_converged_tier_trains_to_a_plateau_with_distillation(tiny_model_dir, text_file, tmp_path):
    bench_setup = Setup(
        str(tiny_model_dir),
        steps=2,
        trials=1,
        finetune_steps=2,
        work=tmp_path / "quick",
        data=str(text_file),
        tier="converged",
        converged_work=tmp_path / "converged",
    )
    row = Row(
        "3x",
        3,
        None,
        "search_spaces/default.yaml",
        "whole model",
        {"lowrank": {"method": "lowrank"}, "prune": {"method": "prune"}},
    )
    dense = reference.run_dense(bench_setup)
    best = reference.run_best_uniform(bench_setup, row)
    small = reference.run_small_dense(bench_setup, row)
    assert (tmp_path / "converged" / "3x" / "best-uniform" / "bench.json").is_file()
    assert best["method"] in ("lowrank", "prune") and "initialisation" in best["chosen_by"]  # no quick tier yet
    # the quick tier's trained results choose only once every single method of the row has run
    quick = Setup(str(tiny_model_dir), 2, 1, 2, tmp_path / "quick", data=str(text_file))
    reference.run_single(quick, row, "prune")
    assert "initialisation" in reference.choose_best_uniform(bench_setup, row)[2]  # low-rank has not run
    reference.run_single(quick, row, "lowrank")
    name, _, basis = reference.choose_best_uniform(bench_setup, row)
    vals = {e: reference.result_of(tmp_path / "quick", "3x", e)["val_ppl"] for e in ("lowrank", "prune")}
    assert "quick tier" in basis and name == min(vals, key=vals.get)
    for r in (dense, best, small):
        assert r["tier"] == "converged" and r["distill"] is True and r["stopped"] in ("steps", "plateau")
        assert r["cooldown"] == COOLDOWN  # the plateau rule's cooldown is part of the recipe it records
        # the tier keeps the weight its entrants were measured at, whatever final training's default
        assert r["distill_weight"] == reference.CONVERGED_DISTILL_WEIGHT == 0.5 != training.DEFAULT_DISTILL_WEIGHT
    pre = json.loads((tiny_model_dir / "model.json").read_text())["pretrain"]
    assert dense["val_ppl"] <= pre["val_ppl"] * (1 + 1e-3)  # the recipe never ends worse than the checkpoint


def test_the_readme_block_is_replaced_and_nothing_else():
    from autoshrink.bench.reference_report import README_BEGIN, README_END, readme_block

    text = f"intro\n{README_BEGIN}\nold claim\n{README_END}\nrest\n"
    assert readme_block(text, ["| 25x | +1.0% |"]) == f"intro\n{README_BEGIN}\n| 25x | +1.0% |\n{README_END}\nrest\n"
    with pytest.raises(ValueError, match="no block"):
        readme_block("no markers here", ["x"])


def test_the_readme_claims_only_what_the_benchmark_table_holds():
    """README.md's goal block is generated: each of its table rows is a row of results/BENCHMARK.md."""
    from autoshrink.bench.reference_report import README_BEGIN, README_END

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    block = readme.split(README_BEGIN, 1)[1].split(README_END, 1)[0]
    rows = [line for line in block.splitlines() if line.startswith("| ") and not line.startswith("| budget")]
    table = (root / "results" / "BENCHMARK.md").read_text().splitlines()
    assert rows and all(row in table for row in rows)


def test_a_converged_entrant_is_labelled_from_the_quick_search_it_trained(tmp_path):
    """The converged tier trains the quick tier's search: its label and the plan's origin are read
    from that search's folder (its --run-dir), not from the converged folder, which has none."""
    from autoshrink.bench.reference_report import _label, _search_dir

    search = tmp_path / "quick" / "25x" / "autoshrink" / "search"
    search.mkdir(parents=True)
    (search / "run.json").write_text(json.dumps({"warm_start": True}))
    r = {"search_command": f"autoshrink search --budget 25x --run-dir {search}", "plan": {}}
    converged = tmp_path / "converged"
    row = Row("25x", 25, None, "search_spaces/default.yaml", "whole model", {})
    assert _search_dir(converged, "25x", r) == search
    assert _search_dir(converged, "25x", {}) == converged / "25x" / "autoshrink" / "search"
    assert _label(row, "autoshrink", r, converged, "converged") == "**autoshrink**"
    (search / "run.json").write_text(json.dumps({"warm_start": False}))
    assert _label(row, "autoshrink", r, converged, "converged") == "**autoshrink** (no warm start)"


def test_best_uniform_takes_the_result_of_an_autoshrink_entrant_that_trained_the_same_plan(bench_setup, monkeypatch):
    row = ROWS["lstm-25x"]
    plan = {"rnn.0.ih": {"method": "lowrank", "rank": 3}}
    twin = entrant_dir(bench_setup.tier_work, row.name, "autoshrink")
    twin.mkdir(parents=True)
    done = {
        "test_ppl": 40.0,
        "val_ppl": 41.0,
        "stored_bytes": 10,
        "latency_ms": 1.0,
        "tokens_per_s": 5.0,
        "steps": 7,
        "train_seconds": 3.0,
        "file_bytes": 10,
        "plan": plan,
        "commit": "abc",
        "tier": bench_setup.tier,
        "protocol": reference.PROTOCOL,
        "stopped": "steps",
        "distill": False,
        "lr": 5e-4,
        "model": bench_setup.model_name,
        "data": bench_setup.data,
        "search_seconds": 99.0,
    }
    (twin / "bench.json").write_text(json.dumps(done))
    monkeypatch.setattr(reference, "choose_best_uniform", lambda s, r: ("lowrank", plan, "by test"))
    monkeypatch.setattr(reference, "train_entrant", lambda *a, **k: pytest.fail("the same plan was trained twice"))
    best = reference.run_best_uniform(bench_setup, row)
    assert best["test_ppl"] == 40.0 and best["plan"] == plan and best["same_plan_as"] == "autoshrink"
    assert "search_seconds" not in best and best["method"] == "lowrank"
    assert result_of(bench_setup.tier_work, row.name, reference.BEST_UNIFORM) == best
    # another plan, or another protocol's result, is trained
    trained = []
    monkeypatch.setattr(reference, "train_entrant", lambda *a, **k: trained.append(a[1]) or {})
    monkeypatch.setattr(reference, "choose_best_uniform", lambda s, r: ("lowrank", {"x": 1}, "by test"))
    reference.run_best_uniform(bench_setup, row)
    monkeypatch.setattr(reference, "choose_best_uniform", lambda s, r: ("lowrank", plan, "by test"))
    for other in ({"protocol": reference.PROTOCOL - 1}, {"tier": "converged"}, {"seed": bench_setup.seed + 1}):
        (twin / "bench.json").write_text(json.dumps({**done, **other}))
        reference.run_best_uniform(bench_setup, row)
    assert trained == [{"x": 1}, plan, plan, plan]


def test_the_small_dense_model_trains_from_scratch_at_its_pretraining_rate(bench_setup, monkeypatch):
    from autoshrink.models.presets import PRESETS
    from autoshrink.models.training import DEFAULT_LR

    assert reference.scratch_lr("kjv-lstm") == PRESETS["kjv-lstm"].train.lr == 2e-3
    assert reference.scratch_lr(str(bench_setup.model_name)) == DEFAULT_LR  # a model folder: no preset to read
    seen = {}
    monkeypatch.setattr(reference, "scratch_lr", lambda name: 7e-3)
    import autoshrink.final.train as final_train

    real = final_train.train_plan

    def spy(*a, **k):
        seen.update(k["options"])
        return real(*a, **k)

    monkeypatch.setattr(final_train, "train_plan", spy)
    result = reference.run_small_dense(bench_setup, ROWS["25x"])
    assert seen["lr"] == 7e-3 and result["lr"] == 7e-3


@pytest.mark.parametrize("tier", ["quick", "converged"])
def test_the_report_lists_every_entrant_of_a_row_once_and_autoshrink_last(tier, tmp_path):
    """The converged tier trains autoshrink first; its table still lists the small dense model and
    autoshrink once each (it once showed autoshrink twice and dropped the small dense row)."""
    from autoshrink.bench.reference_report import _entrants

    row = reference.ROWS["25x"]
    listed = _entrants(row, tmp_path, tier)
    assert sorted(listed) == sorted(reference.entrants_of(row, tier))
    assert listed[-1] == "autoshrink" and reference.SMALL_DENSE in listed


def test_a_converged_entrant_of_an_earlier_search_is_named_as_such(tmp_path):
    from types import SimpleNamespace

    from autoshrink.bench.reference_report import stale_plans

    bench_setup = SimpleNamespace(work=tmp_path / "quick", converged_work=tmp_path / "converged")
    row = ROWS["25x"]

    def entrant(work, plan, commit):
        folder = entrant_dir(work, row.name, "autoshrink")
        folder.mkdir(parents=True)
        (folder / "bench.json").write_text(json.dumps({"plan": plan, "commit": commit, "test_ppl": 40.0}))

    entrant(bench_setup.converged_work, {"encoder": {"method": "lowrank", "rank": 8}}, "aaa1111")
    entrant(bench_setup.work, {"encoder": {"method": "lowrank", "rank": 8}}, "aaa1111")
    assert stale_plans(bench_setup, [row]) == []  # the converged tier trained what the quick tier's search trains
    (entrant_dir(bench_setup.work, row.name, "autoshrink") / "bench.json").write_text(
        json.dumps({"plan": {"encoder": {"method": "lowrank", "rank": 9}}, "commit": "bbb2222", "test_ppl": 41.0})
    )
    (line,) = [x for x in stale_plans(bench_setup, [row]) if x]
    assert line.startswith("- 25x: ") and "aaa1111" in line and "bbb2222" in line


def test_an_earlier_autoshrink_entrant_kept_beside_the_new_one_is_listed_before_it(tmp_path):
    from autoshrink.bench.reference_report import COLD, _entrants, _label

    row = ROWS["25x"]
    folder = entrant_dir(tmp_path, row.name, COLD)
    folder.mkdir(parents=True)
    r = {"plan": {"encoder": {"method": "lowrank", "rank": 8}}, "commit": "aaa1111", "test_ppl": 38.6}
    (folder / "bench.json").write_text(json.dumps(r))
    listed = _entrants(row, tmp_path, "converged")
    assert listed[-2:] == [COLD, "autoshrink"]
    assert _label(row, COLD, r, tmp_path, "converged") == "autoshrink, an earlier search's plan (measured at aaa1111)"


def test_an_entrant_of_the_benchmark_s_folders_is_kept_as_a_record_the_report_reads_when_its_folder_is_gone(
    tmp_path, monkeypatch
):
    import shutil

    works = {"quick": tmp_path / "runs" / "bench", "converged": tmp_path / "runs" / "bench-converged"}
    monkeypatch.setattr(reference, "WORKS", works)
    monkeypatch.setattr(reference, "RECORDS", tmp_path / "records")
    reference._record(entrant_dir(works["converged"], "lstm-25x", "autoshrink"), {"test_ppl": 39.5})
    reference._record(entrant_dir(works["quick"], "dense", "dense"), {"test_ppl": 38.5})
    assert (tmp_path / "records" / "converged" / "lstm-25x" / "autoshrink.json").is_file()
    assert (tmp_path / "records" / "quick" / "dense.json").is_file()
    shutil.rmtree(tmp_path / "runs")  # a new checkout: the run folders are gone
    assert result_of(works["converged"], "lstm-25x", "autoshrink") == {"test_ppl": 39.5}
    assert result_of(works["quick"], "dense", "dense") == {"test_ppl": 38.5}
    assert result_of(works["quick"], "lstm-25x", "autoshrink") is None
    # A folder of its own (a test's, a scratch benchmark) keeps no record.
    reference._record(entrant_dir(tmp_path / "elsewhere", "25x", "lowrank"), {"test_ppl": 40.0})
    assert sorted(p.name for p in (tmp_path / "records").rglob("*.json")) == ["autoshrink.json", "dense.json"]


def test_an_entrant_takes_an_experiment_s_identical_training_but_not_one_the_plateau_stopped_at_once(
    bench_setup, monkeypatch, tmp_path
):
    """bench/toward_uniform trains plans exactly as entrants are trained: the autoshrink entrant of
    the same plan takes that result. A converged run stopped by the plateau rule before the
    cooldown existed (no `cooldown` recorded) trained otherwise, and is trained again."""
    from dataclasses import replace

    setup = replace(bench_setup, tier="converged", converged_work=tmp_path / "converged")
    monkeypatch.setattr(reference, "EXPERIMENTS", {"quick": tmp_path / "x", "converged": tmp_path / "experiments"})
    row = ROWS["lstm-25x"]
    plan = {"rnn.0.ih": {"method": "lowrank", "rank": 3}}
    folder = tmp_path / "experiments" / row.name / "w0.5-abc"
    folder.mkdir(parents=True)
    done = {"test_ppl": 39.5, "val_ppl": 40.0, "stored_bytes": 10, "latency_ms": 1.0, "tokens_per_s": 5.0}
    done |= {"steps": 2265, "train_seconds": 3.0, "plan": plan, "commit": "abc", "tier": "converged"}
    done |= {"protocol": reference.PROTOCOL, "stopped": "steps", "distill": True, "seed": 0, "lr": 5e-4}
    done |= {"model": setup.model_name, "data": setup.data}
    (folder / "bench.json").write_text(json.dumps(done))
    trained = []
    monkeypatch.setattr(reference, "train_entrant", lambda *a, **k: trained.append(a[1]) or {})
    out = entrant_dir(setup.tier_work, row.name, "autoshrink")
    got = reference.train_once(setup, row, plan, out, "lstm-25x autoshrink", {"trial": 1})
    assert trained == [] and got["test_ppl"] == 39.5 and got["same_plan_as"] == str(folder) and got["trial"] == 1
    assert result_of(setup.tier_work, row.name, "autoshrink") == got
    out.joinpath("bench.json").unlink()
    (folder / "bench.json").write_text(json.dumps({**done, "stopped": "plateau"}))  # stopped at once: not the same
    reference.train_once(setup, row, plan, out, "lstm-25x autoshrink", {})
    assert trained == [plan]
    (folder / "bench.json").write_text(json.dumps({**done, "stopped": "plateau", "cooldown": COOLDOWN}))
    assert reference.train_once(setup, row, plan, out, "lstm-25x autoshrink", {})["test_ppl"] == 39.5
    assert trained == [plan]
    # another rate, no distillation, another model, or a small dense model trained from scratch: another training
    # another rate, distillation weight or cap (bench/compass), no distillation, another model, or a small
    # dense model trained from scratch: another training
    others = ({"lr": 2e-3}, {"distill_weight": 0.25}, {"epochs": 6.0}, {"distill": False}, {"model": "kjv-lstm-tiny"})
    for other in (*others, {"dims": 41}):
        out.joinpath("bench.json").unlink(missing_ok=True)
        (folder / "bench.json").write_text(json.dumps({**done, **other}))
        reference.train_once(setup, row, plan, out, "lstm-25x autoshrink", {})
    assert trained == [plan] * 7
    out.joinpath("bench.json").unlink(missing_ok=True)  # the same weight and cap, recorded: the same training
    (folder / "bench.json").write_text(json.dumps({**done, "distill_weight": 0.5, "epochs": 3.0}))
    assert reference.train_once(setup, row, plan, out, "lstm-25x autoshrink", {})["test_ppl"] == 39.5


def test_singles_of_the_row_without_quantisation_are_stored_fp32_as_autoshrinks_space(bench_setup):
    from autoshrink.bench.entrants import best_storage_plan

    import yaml

    vocab = ROWS["vocab-6.6x"]
    space = yaml.safe_load(Path(vocab.space).read_text())
    assert "bits" not in json.dumps(space)  # autoshrink's space here stores fp32 only ...
    row = Row("vocab-2x", 2, vocab.roles, vocab.space, vocab.scope, vocab.singles)
    plan, tried = best_storage_plan(bench_setup, row, row.singles["lowrank"])
    assert plan is not None and tried
    assert {cfg["bits"] for cfg in plan.values()} == {32}  # ... and so does every single method
    assert {t["bits"] for t in tried} == {32}
    whole, tried_whole = best_storage_plan(bench_setup, Row("2x", 2, None, "", "", {}), reference.SINGLES["lowrank"])
    assert {t["bits"] for t in tried_whole} > {32}  # elsewhere the widths are tried
