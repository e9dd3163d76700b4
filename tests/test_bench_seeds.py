"""bench/seeds: the quick tier's goal rows trained at other training seeds, the verdicts computed."""

from __future__ import annotations

import json
import shutil

import pytest

from autoshrink.bench import seeds
from autoshrink.bench.reference import BEST_UNIFORM, Setup, entrant_dir

OURS = {"rnn.0.hh": {"method": "lowrank", "rank": 4}}
UNIFORM = {"rnn.0.ih": {"method": "lowrank", "rank": 3}, "rnn.0.hh": {"method": "lowrank", "rank": 3}}


def _write(work, row, entrant, test_ppl, plan, val_ppl=None):
    out = entrant_dir(work, row, entrant)
    out.mkdir(parents=True)
    result = {"test_ppl": test_ppl, "val_ppl": val_ppl or test_ppl + 0.5, "plan": plan, "protocol": 2}
    (out / "bench.json").write_text(json.dumps(result))


def _write_over(work, row, entrant, test_ppl, plan):
    shutil.rmtree(entrant_dir(work, row, entrant))
    _write(work, row, entrant, test_ppl, plan)


def _quick(tmp_path):
    """A quick tier whose 25x row has an autoshrink entrant and two single methods (lowrank the best by val)."""
    quick = tmp_path / "quick"
    _write(quick, "dense", "dense", 40.0, {})
    _write(quick, "25x", "autoshrink", 41.0, OURS)
    _write(quick, "25x", "lowrank", 44.0, UNIFORM, val_ppl=44.5)
    _write(quick, "25x", "tt", 43.0, {"rnn.0.hh": {"method": "tt", "rank": 2}}, val_ppl=47.0)  # better test, worse val
    return quick


def _table(dense, ours, theirs):
    return {"dense": dense, "autoshrink": ours, BEST_UNIFORM: theirs}


def test_the_verdict_is_computed_per_seed_and_on_the_mean_increase():
    m = {
        "table": {"25x": {0: _table(40.0, 41.0, 44.0), 1: _table(40.0, 42.0, 42.2)}},
        "methods": {"25x": "lowrank"},
    }
    text = seeds.markdown(m, [0, 1], "cmd")
    assert "| 25x | 0 | 40.00 | 41.00 | lowrank 44.00 | +2.50% | +10.00% | yes (0.25x) |" in text
    assert "| 25x | 1 | 40.00 | 42.00 | lowrank 42.20 | +5.00% | +5.50% | no (0.91x) |" in text
    # mean increases +3.75% and +7.75%: 0.48x
    assert "- 25x: within 0.85x at every seed: **no**; on the mean increase over 2 seeds" in text
    assert "**yes (0.48x)**" in text
    m["uniform"] = {"25x": "lowrank"}  # the searched plan is a uniform one: never a per-site win
    text = seeds.markdown(m, [0, 1], "cmd")
    assert "+10.00% | no: the uniform lowrank plan |" in text and "**no: the uniform lowrank plan**" in text
    m["uniform"] = {}
    m["table"]["25x"][1] = _table(None, None, None)
    assert "- 25x: 1 of 2 seeds not trained yet" in seeds.markdown(m, [0, 1], "cmd")


def test_a_seed_trains_the_quick_tier_s_plans_and_reads_seed_0_from_the_tier(
    tiny_model_dir, text_file, tmp_path, monkeypatch
):
    monkeypatch.setattr(seeds, "RECORDS", tmp_path / "records")
    quick, work = _quick(tmp_path), tmp_path / "seeds"
    setup = Setup(str(tiny_model_dir), 2, 1, 2, quick, data=str(text_file), train_seed=1)
    trained = []
    seeds.train_seed(setup, ["25x"], work, log=trained.append)
    assert trained == ["seed 1: dense dense", "seed 1: 25x autoshrink", f"seed 1: 25x {BEST_UNIFORM}"]
    for row, entrant, plan in (("dense", "dense", {}), ("25x", "autoshrink", OURS), ("25x", BEST_UNIFORM, UNIFORM)):
        folder = seeds.seed_dir(work, 1, row, entrant, plan)
        r = json.loads((folder / "bench.json").read_text())
        assert r["plan"] == plan and r["seed"] == 1 and r["tier"] == "quick" and r["steps"] <= 2
        assert json.loads(seeds.record_of(folder, work).read_text()) == r  # the committed copy
    seeds.train_seed(setup, ["25x"], work, log=trained.append)
    assert len(trained) == 3  # finished trainings are kept
    m = seeds.measured(["25x"], [0, 1], work, quick)
    assert m["methods"] == {"25x": "lowrank"} and m["uniform"] == {"25x": None}  # chosen by validation
    assert m["table"]["25x"][0] == _table(40.0, 41.0, 44.0)
    assert all(isinstance(v, float) for v in m["table"]["25x"][1].values())
    shutil.rmtree(work)  # a fresh checkout: the committed records alone
    assert seeds.measured(["25x"], [0, 1], work, quick)["table"] == m["table"]
    # the quick tier searched again: another plan is another training, not the kept one
    _write_over(quick, "25x", "autoshrink", 40.5, {"rnn.0.hh": {"method": "lowrank", "rank": 5}})
    assert seeds.measured(["25x"], [0, 1], work, quick)["table"]["25x"][1]["autoshrink"] is None


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        seeds.main(["--seeds", "0", "--report-only"])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err
    quick = _quick(tmp_path)
    out = tmp_path / "twice.md"
    assert (
        seeds.main(["--report-only", "--rows", "25x", "--seeds", "1", "1", "--quick", str(quick), "--out", str(out)])
        == 0
    )
    assert out.read_text().count("| 25x | 1 |") == 1  # a seed given twice is one seed
    capsys.readouterr()
    argv = ["--report-only", "--rows", "25x", "--quick", str(tmp_path / "empty"), "--out", str(tmp_path / "r.md")]
    assert seeds.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no trained autoshrink" in err and not (tmp_path / "r.md").exists()
