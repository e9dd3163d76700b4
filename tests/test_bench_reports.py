"""Goal and pick lines of the benchmark reports are computed from the measured rows."""

from __future__ import annotations

from autoshrink.bench.methods import collapse_lines


def _row(method, storage, ppl, ratio=10.0, site="decoder 100x8"):
    return {"site": site, "target": "10x", "method": method, "storage": storage, "data": ppl, "ratio": ratio}


def test_a_method_is_judged_at_its_best_storage_and_fp32_collapses_are_named():
    rows = [_row("prune", "fp32", 300.0), _row("prune", "8-bit", 50.0), _row("lowrank", "fp32", 40.0)]
    lines = collapse_lines(rows, dense=35.0)
    assert lines[0].endswith("met") and "NOT" not in lines[0]
    assert "prune (decoder: 300)" in lines[1]


def test_a_collapse_at_every_storage_fails_the_goal():
    rows = [_row("hash", "fp32", 300.0), _row("hash", "8-bit", 80.0), _row("lowrank", "fp32", 40.0)]
    assert "NOT met: hash (decoder, 8-bit: 80)" in collapse_lines(rows, dense=35.0)[0]


def test_a_method_that_cannot_reach_the_ratio_is_reported_outside_the_check():
    rows = [_row("lightrnn", "fp32", 270.0, ratio=31.0), _row("lowrank", "fp32", 40.0, site="encoder 100x8")]
    lines = collapse_lines(rows, dense=35.0)
    assert lines[0].endswith(": met")
    assert "lightrnn (decoder: 31x, val ppl 270)" in lines[-1]


def test_the_sampler_pick_and_goal_lines_come_from_the_curves():
    from autoshrink.bench.samplers import verdict_lines

    curves = {
        "random": [[0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4]],
        "tpe": [[0.0, 0.2, 0.2, 0.5, 0.5, 0.5, 0.5, 0.5]],
    }
    lines = verdict_lines(curves, 8)
    assert "**tpe**" in lines[0]
    assert (
        "tpe reaches random search's (the same allocated and uniform first trials) hypervolume at 2N trials in N trials: N=4: yes"
        in lines[1]
    )
    curves["tpe"] = [[0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1, 0.1]]
    assert "N=4: no" in verdict_lines(curves, 8)[1]


def test_the_whole_search_is_also_held_against_plain_random_search():
    from autoshrink.bench.samplers import PLAIN, verdict_lines

    curves = {
        "random": [[0.3, 0.4, 0.4, 0.5, 0.5, 0.5, 0.5, 0.5]],
        PLAIN: [[0.0, 0.0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2]],
        "profile": [[0.3, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]],
    }
    lines = verdict_lines(curves, 8)
    assert "**random**" in lines[0]  # random is a sampler to pick; plain random search is not
    assert lines[1].startswith("- profile reaches random search's") and lines[1].endswith("N=4: no")
    assert lines[2].startswith("- profile reaches plain random search's") and lines[2].endswith("N=4: yes")
    assert len(lines) == 3  # no baseline is held against a baseline
    curves[PLAIN] = [[0.9] * 8]
    assert "**random**" in verdict_lines(curves, 8)[0]  # the highest, but not a sampler to pick


def test_a_sampler_that_only_ties_random_search_is_reported_as_a_tie():
    from autoshrink.bench.samplers import verdict_lines

    flat = [0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2]
    lines = verdict_lines({"random": [flat], "gp": [list(flat)]}, 8)
    assert "N=4: yes (tie)" in lines[1]


def test_the_sampler_s_own_trials_are_counted_apart_from_the_seeds(tiny_run):
    import json

    from autoshrink.bench.samplers import sampled_lines, sampled_stats
    from autoshrink.search.run_folder import trial_rows
    from autoshrink.search.study import load_study, origin_of

    study = load_study(tiny_run.run_dir)
    trials = trial_rows(study)
    limit = json.loads((tiny_run.run_dir / "run.json").read_text())["max_bytes"]
    stats = sampled_stats(study, trials, limit)
    sampled = [t for t in study.get_trials() if origin_of(t) == "sampled" and "steps" in t.user_attrs]
    assert stats["trained"] == len(sampled)
    assert stats["on_front"] <= stats["trained"]
    assert "| random | " + str(stats["trained"]) in "\n".join(sampled_lines({"random": [stats]}))
