"""`autoshrink profile`: the cheap steps alone into a run folder that a search resumes from, the
profile as a table per site (front and allocation marked), as csv/json, and as curves beside the front."""

from __future__ import annotations

import io
import json
import math
import shutil

import pandas as pd
import pytest

from autoshrink import api
from autoshrink.allocate import profile as profile_module
from autoshrink.search import allocation as allocation_module
from autoshrink.cli import main
from autoshrink.front.profile_plot import figure, profile_plot_data
from autoshrink.front.profile_table import read_profile_table
from autoshrink.search.config import SearchConfig
from autoshrink.search.study import load_study

from test_front import make_run
from test_search import SPACE, _search


@pytest.fixture(scope="module")
def space_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(SPACE)
    return path


@pytest.fixture(scope="module")
def profiled(tiny_model_dir, text_file, space_path, tmp_path_factory):
    """A run folder of the cheap steps alone (calibration, profile, allocation) at 4x."""
    config = SearchConfig(
        "4x",
        model=str(tiny_model_dir),
        data=str(text_file),
        space=str(space_path),
        run_dir=tmp_path_factory.mktemp("runs") / "run",
    )
    return api.profile(config, command="test profile", log=lambda line: None)


def _count_profile_builds(monkeypatch) -> list:
    calls = []
    real = profile_module.build_site
    monkeypatch.setattr(profile_module, "build_site", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    return calls


def test_the_cheap_steps_write_profile_allocation_and_run_json_but_no_study(profiled):
    run = profiled.run_dir
    assert (run / "profile.csv").is_file() and (run / "allocation.json").is_file()
    assert not (run / "study.db").exists() and not (run / "trials.csv").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["budget"] == "4x" and info["calibration_tokens"] > 0 and info["space_digest"]
    for trial_setting in ("finetune_steps", "sampler", "distill", "trials"):  # the later search chooses them
        assert trial_setting not in info
    allocation = json.loads((run / "allocation.json").read_text())
    assert allocation["best"]["bytes"] <= info["max_bytes"] == allocation["limit"]
    assert allocation["best"]["plan"] == {n: c.to_dict() for n, c in profiled.allocation.best.plan.items()}
    assert allocation_module._zoomed(allocation) == profiled.allocation.zoomed  # recorded (none at this space's ranks)


def test_the_table_sorts_each_site_by_bytes_and_marks_its_front_and_the_allocation(profiled, capsys):
    run = profiled.run_dir
    table = api.profile_table(run)
    raw = pd.read_csv(run / "profile.csv")
    assert len(table) == len(raw) and list(dict.fromkeys(table["site"])) == list(dict.fromkeys(raw["site"]))
    allocation = json.loads((run / "allocation.json").read_text())
    plan = allocation["best"]["plan"]
    for site, rows in table.groupby("site", sort=False):
        assert list(rows["bytes"]) == sorted(rows["bytes"])
        points = list(zip(rows["bytes"], rows["loss_delta"]))
        dominated = [any(b <= x and c <= y and (b, c) != (x, y) for b, c in points) for x, y in points]
        assert list(rows["pareto"]) == [not d for d in dominated], site
        m, n = allocation["sites"][site]["shape"]
        assert rows["ratio"].tolist() == pytest.approx((4 * m * n / rows["bytes"]).tolist())
        assert rows["ppl"].tolist() == pytest.approx(
            [math.exp(allocation["dense_loss"] + d) for d in rows["loss_delta"]]
        )
        chosen = rows[rows["allocated"]]
        if site in plan:
            assert len(chosen) == 1 and json.loads(chosen.iloc[0]["knobs"]) == plan[site]
        else:
            assert chosen.empty
    assert main(["profile", str(run)]) == 0
    out = capsys.readouterr().out
    for site, rows in table.groupby("site", sort=False):
        block = out.split(f"\n{site}  ", 1)[1].split("\n\n", 1)[0].splitlines()
        body = [line for line in block if line.startswith("  ") and "method" not in line]
        assert len(body) == len(rows)  # one line per option
        assert sum(line[2] == "*" for line in body) == int(rows["pareto"].sum())
        assert sum(line[3] == ">" for line in body) == int(rows["allocated"].sum())
    assert f"allocation within {allocation['limit']:,} bytes: {allocation['best']['bytes']:,} bytes" in out
    assert allocation["hedges"]  # the fixture's best plan has a method another plan can do without
    for hedge in allocation["hedges"]:  # each hedge's line, with its own bytes
        assert f"{hedge['source']} (hedge): {hedge['bytes']:,} bytes" in out
    halfway = allocation["toward_uniform"]  # the best plan's sizes halfway to uniform ones, its own line
    assert f"the allocation halfway to uniform sizes: {halfway['bytes']:,} bytes" in out


def test_csv_and_json_hold_the_same_rows(profiled, capsys):
    table = api.profile_table(profiled.run_dir)
    assert main(["profile", str(profiled.run_dir), "--format", "csv"]) == 0
    frame = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(frame["bytes"]) == list(table["bytes"]) and list(frame["pareto"]) == list(table["pareto"])
    assert main(["profile", str(profiled.run_dir), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["site"] for r in rows] == list(table["site"]) and all(isinstance(r["knobs"], dict) for r in rows)


def test_an_older_run_without_allocation_json_and_rows_of_another_model_still_render(profiled, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(profiled.run_dir, run)
    (run / "allocation.json").unlink()
    raw = pd.read_csv(run / "profile.csv", dtype=str)
    foreign = raw.iloc[:1].assign(model="another-model")
    pd.concat([foreign, raw]).to_csv(run / "profile.csv", index=False)
    p = read_profile_table(run)
    assert len(p.table) == len(raw) and p.hidden == 1 and not p.table["allocated"].any()
    text = api.profile_text(run)
    assert "no allocation.json" in text and "1 row(s)" in text


def test_a_search_in_the_same_folder_reads_the_profile_and_trains_the_allocation_first(
    profiled, tiny_model_dir, text_file, space_path, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    shutil.copytree(profiled.run_dir, run)
    builds = _count_profile_builds(monkeypatch)
    monkeypatch.setattr(allocation_module, "allocate", _must_not_allocate)
    result = _search(tiny_model_dir, text_file, space_path, run, trials=1, finetune_steps=2)
    assert builds == []  # every option was read from profile.csv, none measured again
    # and the knapsack and refinement were not run again: allocation.json was read
    first = min(load_study(run).get_trials(), key=lambda t: t.number)
    assert "allocated" in first.user_attrs
    assert first.user_attrs["plan"] == json.loads((run / "allocation.json").read_text())["best"]["plan"]
    info = json.loads((run / "run.json").read_text())
    assert info["invocations"][0] == "test profile" and info["finetune_steps"] == 2
    assert not result.front.empty
    # front --plot draws the front, and the profile's curves beside it
    assert main(["front", str(run), "--plot", str(tmp_path / "plots" / "front.png")]) == 0
    assert (tmp_path / "plots" / "front-profile.png").read_bytes()[:4] == b"\x89PNG"
    assert "front-profile.png" in capsys.readouterr().err
    make_run(tmp_path / "no-profile", [{"stored_bytes": 1000, "ratio": 20.0, "val_ppl": 50.0, "feasible": True}])
    assert main(["front", str(tmp_path / "no-profile"), "--plot", str(tmp_path / "np" / "front.png")]) == 0
    assert not (tmp_path / "np" / "front-profile.png").exists()  # no profile, no second figure


def _must_not_allocate(*args, **kwargs):
    raise AssertionError("the allocation was computed again")


def test_an_allocation_for_another_limit_or_slice_is_computed_again(
    profiled, tiny_model_dir, text_file, space_path, tmp_path, monkeypatch
):
    real = allocation_module.allocate
    for key, value in (("limit", 1), ("held_out_start", 7), ("hedges", None), ("toward_uniform", None)):
        run = tmp_path / key
        shutil.copytree(profiled.run_dir, run)
        recorded = json.loads((run / "allocation.json").read_text())
        older = {k: v for k, v in recorded.items() if k != key} if value is None else {**recorded, key: value}
        (run / "allocation.json").write_text(json.dumps(older))  # None: written before the key existed
        calls = []
        monkeypatch.setattr(allocation_module, "allocate", lambda *a, **k: calls.append(1) or real(*a, **k))
        _search(tiny_model_dir, text_file, space_path, run, trials=1, finetune_steps=2)
        assert calls == [1], key
        assert json.loads((run / "allocation.json").read_text())[key] == recorded[key]  # rewritten for this run


def test_measuring_into_a_profiled_folder_resumes_it(profiled, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(profiled.run_dir, run)
    builds = _count_profile_builds(monkeypatch)
    # model, data and space come from run.json, as a resumed search's do
    assert main(["profile", "--budget", "4x", str(run), "--plot", str(tmp_path / "p.png")]) == 0
    assert builds == []
    captured = capsys.readouterr()
    assert "allocation within" in captured.out
    assert "search from this profile: autoshrink search --budget 4x" in captured.err and str(run) in captured.err
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    info = json.loads((run / "run.json").read_text())
    assert len(info["invocations"]) == 2 and len(info["commits"]) == 2  # one commit per invocation


def test_the_curves_have_a_panel_per_site_a_line_per_method_and_width_and_the_allocation_ringed(profiled):
    p = read_profile_table(profiled.run_dir)
    d = profile_plot_data(p)
    assert [panel.site for panel in d.panels] == list(dict.fromkeys(p.table["site"]))
    for panel in d.panels:
        rows = p.table[p.table["site"] == panel.site]
        assert sum(len(c.points) for c in panel.curves) == len(rows)
        assert len({c.label for c in panel.curves}) == len(panel.curves)
        for curve in panel.curves:
            assert [x for x, _ in curve.points] == sorted(x for x, _ in curve.points)
        chosen = rows[rows["allocated"]]
        expected = (float(chosen.iloc[0]["bytes"]), float(chosen.iloc[0]["loss_delta"])) if len(chosen) else None
        assert panel.chosen == expected
    fig = figure(d)
    assert len(fig.axes) == len(d.panels)
    labels = fig.legends[0].get_texts()
    assert {t.get_text() for t in labels} >= {c.label for panel in d.panels for c in panel.curves} | {"dense"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["profile"], "give a run folder"),
        (["profile", "/no/such/run"], "no run folder"),
        (["profile", "EMPTY"], "has no profile.csv"),
        (["profile", "EMPTY", "--model", "kjv-lstm-tiny"], "add --budget"),
        (["profile", "EMPTY", "--run-dir", "/elsewhere"], "two folders"),
        (["profile", "--budget", "abc", "--run-dir", "EMPTY"], "abc"),
        (["profile", "--budget", "4ms", "--run-dir", "EMPTY", "--model", "kjv-lstm-tiny"], "latency"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and message in err[0], err


def test_a_measurement_that_contradicts_the_folder_is_refused(profiled, capsys):
    argv = ["profile", "--budget", "4x", "--run-dir", str(profiled.run_dir), "--calibration-tokens", "0"]
    assert main(argv) == 2
    assert "--calibration-tokens 0 contradicts" in capsys.readouterr().err


def test_front_of_a_profile_only_folder_points_to_its_profile(profiled, capsys):
    assert main(["front", str(profiled.run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no study.db" in err[0] and f"autoshrink profile {profiled.run_dir}" in err[0]


def test_help_offers_the_measurement_flags_and_none_of_the_trials(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: autoshrink profile" in out
    for flag in ("--budget", "--model", "--space", "--calibration-tokens", "--run-dir", "--format", "--plot"):
        assert flag in out
    for flag in ("--trials", "--finetune-steps", "--sampler", "--backend"):
        assert flag not in out


def test_a_search_whose_profiled_options_fit_no_plan_starts_from_the_uniform_plans(
    tiny_model_dir, text_file, space_path, tmp_path, monkeypatch
):
    from autoshrink.allocate.pipeline import NoPlanFits

    def no_plan(*args, **kwargs):
        raise NoPlanFits("no plan of the given options fits 1 bytes")

    monkeypatch.setattr(allocation_module, "allocate", no_plan)
    lines = []
    result = _search(
        tiny_model_dir, text_file, space_path, tmp_path / "run", trials=2, finetune_steps=2, log=lines.append
    )
    assert any("no plan of the given options fits" in line and "uniform plans" in line for line in lines)
    first = min(load_study(result.run_dir).get_trials(), key=lambda t: t.number)
    assert "allocated" not in first.user_attrs and first.user_attrs.get("warm_start", "").startswith("uniform ")
    assert not (result.run_dir / "allocation.json").exists()
    # `autoshrink profile` has nothing else to do: it says why, in one line, exit 2
    argv = ["profile", "--budget", "4x", "--model", str(tiny_model_dir), "--data", str(text_file)]
    assert main([*argv, "--space", str(space_path), "--run-dir", str(tmp_path / "p")]) == 2
