"""Profile: one row per site option, measured alone, resumed from profile.csv, optional fine-tune."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from autoshrink.allocate import profile as profile_module
from autoshrink.allocate.profile import fingerprint, profile, row_config
from autoshrink.errors import UserError
from autoshrink.methods.lowrank import LowRankConfig
from autoshrink.methods.prune import PruneConfig
from autoshrink.methods.quant import QuantConfig
from autoshrink.models.discover import discover_sites
from autoshrink.models.training import evaluate_perplexity
from autoshrink.plan import compress, method_bytes

from allocate_fixtures import trained_lstm

OPTIONS = {
    "rnn.0.hh": [LowRankConfig(rank=2), LowRankConfig(rank=8), QuantConfig(bits=16)],
    "decoder": [LowRankConfig(rank=3)],
}


def _count_builds(monkeypatch) -> list:
    calls = []
    real = profile_module.build_site

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(profile_module, "build_site", counting)
    return calls


def test_rows_hold_bytes_and_the_loss_of_each_option_alone():
    model, _, valid = trained_lstm()
    table = profile(model, valid, OPTIONS, progress=False)
    sites = {s.name: s for s in discover_sites(model)}
    assert len(table) == 4 and list(table["site"]) == ["rnn.0.hh"] * 3 + ["decoder"]
    dense = math.log(evaluate_perplexity(model, valid))
    for row in table.to_dict("records"):
        config = row_config(row)
        assert row["bytes"] == method_bytes(sites[row["site"]], config)
        alone = math.log(evaluate_perplexity(compress(model, {row["site"]: config}), valid))
        assert row["loss_delta"] == pytest.approx(alone - dense, abs=1e-5)
    by_rank = dict(zip(table["knobs"], table["loss_delta"]))
    rank2, rank8 = (by_rank[profile_module.option_key(LowRankConfig(rank=r))] for r in (2, 8))
    assert rank2 > rank8 > 0  # a smaller rank loses more; fp16 loses ~nothing
    assert abs(table["loss_delta"].iloc[2]) < 1e-3


def test_a_second_run_reads_the_csv_and_measures_only_new_options(tmp_path, monkeypatch):
    model, _, valid = trained_lstm()
    path = tmp_path / "profile.csv"
    first = profile(model, valid, OPTIONS, path=path, progress=False)
    calls = _count_builds(monkeypatch)
    again = profile(model, valid, OPTIONS, path=path, progress=False)
    assert calls == []
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), again.drop(columns="seconds"), check_dtype=False)
    more = {**OPTIONS, "rnn.1.ih": [LowRankConfig(rank=4)]}
    grown = profile(model, valid, more, path=path, progress=False)
    assert [c.rank for c in calls] == [4] and len(grown) == 5
    assert len(pd.read_csv(path)) == 5
    other_slice = profile(model, valid[:300], {"decoder": [LowRankConfig(rank=3)]}, path=path, progress=False)
    assert len(calls) == 2 and len(other_slice) == 1  # another slice is another key
    assert len(pd.read_csv(path)) == 6


def test_a_short_fine_tune_helps_the_methods_that_need_it_and_leaves_the_model_alone():
    model, train, valid = trained_lstm()
    before = fingerprint(model)
    options = {"rnn.0.hh": [PruneConfig(density=0.1)], "decoder": [LowRankConfig(rank=3)]}
    plain = profile(model, valid, options, progress=False)
    tuned = profile(model, valid, options, finetune_steps=40, train_ids=train, progress=False)
    assert fingerprint(model) == before
    assert list(tuned["finetune_steps"]) == [40, 0]  # low-rank is judged without training
    assert tuned["loss_delta"].iloc[0] < plain["loss_delta"].iloc[0]
    assert tuned["loss_delta"].iloc[1] == pytest.approx(plain["loss_delta"].iloc[1])
    with pytest.raises(UserError, match="train_ids"):
        profile(model, valid, options, finetune_steps=5, progress=False)


def test_unknown_sites_and_foreign_csvs_are_user_errors(tmp_path):
    model, _, valid = trained_lstm()
    with pytest.raises(UserError, match="nope"):
        profile(model, valid, {"nope": [QuantConfig()]}, progress=False)
    bad = tmp_path / "profile.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match="lacks column"):
        profile(model, valid, OPTIONS, path=bad, progress=False)


def test_fingerprints_tell_models_and_data_apart():
    model, _, valid = trained_lstm()
    assert fingerprint(model) == fingerprint(model)
    assert fingerprint(valid) != fingerprint(valid[:-1])
    assert fingerprint({"a": torch.ones(2)}) != fingerprint({"a": torch.zeros(2)})


def _reversed_map(measure, inputs, jobs):
    """A map whose rows come back in another order than asked, as parallel workers' do."""
    return (measure(inputs, job) for job in reversed(list(jobs)))


def test_a_map_returning_rows_in_any_order_gives_the_serial_table(tmp_path):
    model, _, valid = trained_lstm()
    serial = profile(model, valid, OPTIONS, progress=False)
    path = tmp_path / "profile.csv"
    mapped = profile(model, valid, OPTIONS, path=path, progress=False, map_options=_reversed_map, shared=False)
    pd.testing.assert_frame_equal(serial.drop(columns="seconds"), mapped.drop(columns="seconds"), check_dtype=False)
    assert list(pd.read_csv(path)["site"]) == ["decoder"] + ["rnn.0.hh"] * 3  # the CSV as the rows came


def test_an_interrupted_map_keeps_its_rows_and_the_next_profile_measures_the_rest(tmp_path, monkeypatch):
    model, _, valid = trained_lstm()
    path = tmp_path / "profile.csv"

    def interrupted(measure, inputs, jobs):
        for count, row in enumerate(_reversed_map(measure, inputs, jobs)):
            if count == 2:
                raise KeyboardInterrupt
            yield row

    with pytest.raises(KeyboardInterrupt):
        profile(model, valid, OPTIONS, path=path, progress=False, map_options=interrupted, shared=False)
    assert len(pd.read_csv(path)) == 2
    calls = _count_builds(monkeypatch)
    table = profile(model, valid, OPTIONS, path=path, progress=False, shared=False)
    assert [c.rank for c in calls] == [2, 8]  # the two options the interrupted map had not returned
    assert list(table["site"]) == ["rnn.0.hh"] * 3 + ["decoder"] and len(pd.read_csv(path)) == 4


def test_another_run_folder_reuses_the_shared_cache_and_keeps_a_complete_copy(tmp_path, monkeypatch):
    from autoshrink.allocate.profile import shared_path

    monkeypatch.setenv("AUTOSHRINK_CACHE", str(tmp_path / "cache"))
    model, _, valid = trained_lstm()
    first = profile(model, valid, OPTIONS, path=tmp_path / "a" / "profile.csv", progress=False)
    calls = _count_builds(monkeypatch)
    second = profile(model, valid, OPTIONS, path=tmp_path / "b" / "profile.csv", progress=False)
    assert calls == []  # every row came from the cache
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), second.drop(columns="seconds"), check_dtype=False)
    assert len(pd.read_csv(tmp_path / "b" / "profile.csv")) == len(first)  # the run folder's copy is complete
    profile(model, valid, OPTIONS, path=tmp_path / "c" / "profile.csv", progress=False, shared=False)
    assert len(calls) == len(first)  # without the cache everything is measured again
    cache = next((tmp_path / "cache" / "profiles").glob("*.csv"))
    assert (
        cache.name == shared_path(dict(zip(("model", "data", "build"), first.iloc[0][["model", "data", "build"]]))).name
    )
    cache.write_text("not,a\\nprofile")
    profile(model, valid, OPTIONS, path=tmp_path / "d" / "profile.csv", progress=False)
    assert cache.with_suffix(".unreadable").is_file()  # set aside, the profile measured afresh
