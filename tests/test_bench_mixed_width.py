"""bench/mixed_width: the allocation over mixed widths against uniform low-rank, verdict generated."""

from __future__ import annotations

import pytest

from autoshrink.bench import mixed_width

INFO = {"model": "kjv-lstm", "budget": "100x", "finetune_steps": 80, "trial_lr": 5e-4, "seed": 0}


def _rows(ours: float, three: float, four: float) -> list[dict]:
    names = ["allocation over mixed-width.yaml", "uniform low-rank, 3 bits", "uniform low-rank, 4 bits"]
    return [
        {"plan": n, "stored_bytes": 1000, "trial_val_ppl": t + 5, "test_ppl": t, "per_site": "x"}
        for n, t in zip(names, (ours, three, four))
    ]


def test_the_ratio_is_taken_against_the_best_uniform_plan_after_final_training():
    text = mixed_width.markdown({"info": INFO, "rows": _rows(84.65, 90.16, 92.56)}, 38.49, "cmd")
    assert "Best uniform plan after final training: uniform low-rank, 3 bits (90.16)" in text
    assert "**0.89x**" in text and "short of issue 15's 0.85x" in text
    text = mixed_width.markdown({"info": INFO, "rows": _rows(80.0, 95.0, 90.0)}, 38.49, "cmd")
    assert "uniform low-rank, 4 bits (90.00)" in text and "**0.81x**" in text and "within issue 15's" in text


def test_without_the_quick_tier_s_dense_control_it_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        mixed_width.main(["--bench-work", str(tmp_path)])
    assert e.value.code == 2 and "no dense control" in capsys.readouterr().err


def test_uniform_plans_compress_only_the_roles_the_space_names():
    from types import SimpleNamespace

    from autoshrink.search.space import load_space
    from autoshrink.sites import Site

    sites = [
        Site("encoder", "embedding", (1000, 64)),
        Site("rnn.0.ih", "recurrent", (256, 64), bias=True),
        Site("rnn.0.hh", "recurrent", (256, 64), bias=True),
        Site("decoder", "softmax", (1000, 64), bias=True),
    ]
    dense = sum(s.dense_bytes for s in sites)
    recurrent = sum(s.dense_bytes for s in sites if s.role == "recurrent")
    limit = dense - recurrent + recurrent // 8
    ctx = SimpleNamespace(
        sites=sites, max_bytes=limit, freqs=None, model_file=None, space=load_space("search_spaces/lstm-only.yaml")
    )
    plans = mixed_width.uniform_lowrank_plans(ctx, (3, 4))
    assert list(plans) == ["uniform low-rank, 3 bits", "uniform low-rank, 4 bits"]
    for plan in plans.values():
        assert sorted(plan) == ["rnn.0.hh", "rnn.0.ih"]  # the embedding and the softmax stay dense
        assert {cfg["method"] for cfg in plan.values()} == {"lowrank"}


def test_a_bad_budget_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "dense").mkdir()
    (tmp_path / "dense" / "bench.json").write_text('{"test_ppl": 38.49}')
    with pytest.raises(SystemExit) as e:
        mixed_width.main(["--bench-work", str(tmp_path), "--budget", "nonsense", "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "nonsense" in err and "Traceback" not in err


def test_a_width_that_cannot_fit_is_left_out_and_none_fitting_is_one_line():
    from types import SimpleNamespace

    from autoshrink.errors import UserError
    from autoshrink.search.space import load_space
    from autoshrink.sites import Site

    sites = [Site("rnn.0.ih", "recurrent", (256, 64), bias=True), Site("decoder", "softmax", (1000, 64), bias=True)]
    decoder = sites[1].dense_bytes
    space = load_space("search_spaces/lstm-only.yaml")
    # at 2,500 bytes for rnn.0.ih only 16-bit factors fit (the quantised ones' group scales do not)
    tight = SimpleNamespace(sites=sites, max_bytes=decoder + 2500, freqs=None, model_file=None, space=space)
    assert list(mixed_width.uniform_lowrank_plans(tight, (3, 4, 16))) == ["uniform low-rank, 16 bits"]
    tight.max_bytes = decoder + 1500
    with pytest.raises(UserError, match="cannot fit"):
        mixed_width.uniform_lowrank_plans(tight, (3, 4))
