"""The per-site fine-tune in the profile (SearchContext.profile_finetune) and the benchmark that
asks whether it changes the allocation (bench/trained_profile.py)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from autoshrink.bench import trained_profile
from autoshrink.search.allocation import allocation
from autoshrink.search import run_folder

from test_search import SPACE, _search


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def _run(tiny_model_dir, text_file, space_file, tmp_path):
    run = tmp_path / "run"
    _search(tiny_model_dir, text_file, space_file, run, trials=3, budget="3x")
    return run


def test_the_profile_fine_tunes_every_method_and_the_allocation_records_its_steps(
    tiny_model_dir, text_file, space_file, tmp_path
):
    run = _run(tiny_model_dir, text_file, space_file, tmp_path)
    ctx, _ = trained_profile.context(run, 3, log=lambda line: None)
    result = allocation(ctx, tmp_path / "tuned", lambda line: None, strict=True)
    untrained = pd.read_csv(run / run_folder.PROFILE)
    assert set(untrained.finetune_steps) == {0}
    assert set(result.table.finetune_steps) == {3}  # low-rank too, not only the methods pitfall 12 names
    assert set(result.table.method) == set(untrained.method)
    info = json.loads((tmp_path / "tuned" / run_folder.ALLOCATION).read_text())
    assert info["profile_finetune"] == 3
    # the same folder with another step count is allocated again, not read back
    other = allocation(trained_profile.context(run, 0, log=lambda line: None)[0], tmp_path / "tuned", lambda line: None)
    assert set(other.table.finetune_steps) == {0}
    # one row per site, over every option both profiles measured
    rows = trained_profile.ranking_change(untrained, result.table)
    assert {r["site"] for r in rows} == set(untrained.site)
    assert all(r["options"] == len(untrained[untrained.site == r["site"]]) for r in rows)


def test_the_report_trains_three_plans_and_names_the_best_from_the_measurements(
    tiny_model_dir, text_file, space_file, tmp_path, monkeypatch
):
    run = _run(tiny_model_dir, text_file, space_file, tmp_path)
    m = trained_profile.measure(run, 2, log=lambda line: None)
    assert len(m["plans"]) == 3 and any(n.startswith("best uniform control") for n in m["plans"])
    ppl = {n: t["val_ppl"] for n, t in m["trials"].items()}
    text = trained_profile.markdown(m, "cmd")
    best = min(ppl, key=ppl.get)
    assert f"Lowest trial perplexity: **{best}** ({ppl[best]:.2f})" in text
    # measured trials are read back, not trained again
    calls = []
    monkeypatch.setattr(trained_profile, "run_trial", lambda *a, **k: calls.append(1))
    again = trained_profile.measure(run, 2, log=lambda line: None)
    assert calls == [] and again["trials"] == m["trials"]
    # a stored trial of another plan (the run's best control changed) is measured again
    stored = run / "trained-profile-2" / "trial-0.json"
    stored.write_text(json.dumps({**json.loads(stored.read_text()), "plan": {"rnn.0.hh": {"method": "quant"}}}))
    monkeypatch.setattr(
        trained_profile,
        "run_trial",
        lambda *a, **k: calls.append(1) or type("R", (), {"val_ppl": 9.0, "stored_bytes": 1})(),
    )
    third = trained_profile.measure(run, 2, log=lambda line: None)
    assert calls == [1] and next(iter(third["trials"].values()))["val_ppl"] == 9.0
