"""`autoshrink train` and `autoshrink eval`: final training of a front plan, export round trip,
resume from a checkpoint, trial choice, and bad input as exit 2."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

import autoshrink
from autoshrink.cli import main
from autoshrink.data import load_lm_data
from autoshrink.errors import UserError
from autoshrink.final.export import file_bytes
from autoshrink.models import discover_sites
from autoshrink.models.training import evaluate_perplexity
from autoshrink.plan import dense_bytes, parse_plan, plan_stored_bytes, plan_to_json
from autoshrink.final.config import TrainConfig
from autoshrink.final.train import choose_trial, train_trial
from test_export import MIXED
from test_front import make_run

KEYS = {"test_ppl", "stored_bytes", "ratio", "latency_ms", "tokens_per_s"}


def _run(folder, tiny_model_dir, text_file):
    """A run whose front is trial 0 (the mixed plan: quant 3-bit, prune, doped kronecker, lowrank,
    groupreduce) and trial 2 (smaller, worse); 1 is stopped early and 3 over budget."""
    dense = autoshrink.load(str(tiny_model_dir))
    sites, freqs = discover_sites(dense), dense.vocab.freqs
    small_plan = {**MIXED, "rnn.0.hh": {"method": "quant", "bits": 2}}
    trials = []
    for plan, ppl, extra in (
        (MIXED, 8.0, {}),
        (MIXED, 30.0, {"state": "PRUNED"}),
        (small_plan, 9.0, {}),
        (MIXED, 7.0, {"feasible": False}),
    ):
        nbytes = plan_stored_bytes(sites, parse_plan(plan), freqs)
        trials.append(
            {
                "plan": plan_to_json(parse_plan(plan)),
                "stored_bytes": nbytes,
                "val_ppl": ppl,
                "ratio": dense_bytes(dense) / nbytes,
                "latency_ms": 1.0,
                "feasible": True,
                **extra,
            }
        )
    make_run(
        folder,
        trials,
        model=str(tiny_model_dir),
        data=str(text_file),
        budget="2x",
        max_bytes=dense_bytes(dense) // 2,
        dense_bytes=dense_bytes(dense),
    )
    return folder


@pytest.fixture(scope="module")
def trained(tiny_model_dir, text_file, tmp_path_factory):
    run = _run(tmp_path_factory.mktemp("runs") / "run", tiny_model_dir, text_file)
    torch.manual_seed(0)
    return run, train_trial(run, TrainConfig(steps=12, evals=4))


def test_train_exports_the_best_plan_and_load_gives_the_same_perplexity(trained, tiny_model_dir, text_file):
    run, final = trained
    assert final.out == run / "final" and final.metrics["trial"] == 0
    for name in ("model.safetensors", "plan.json", "model.json", "metrics.json"):
        assert (final.out / name).is_file(), name
    dense = autoshrink.load(str(tiny_model_dir))
    lm = load_lm_data(str(text_file), vocab=dense.vocab)
    before = evaluate_perplexity(final.model, lm.test)
    loaded = autoshrink.load(str(final.out))
    after = evaluate_perplexity(loaded, lm.test)
    assert abs(after - before) <= 1e-4 * before
    analytic = plan_stored_bytes(discover_sites(dense), parse_plan(MIXED), dense.vocab.freqs)
    assert file_bytes(final.out) == autoshrink.stored_bytes(loaded) == final.metrics["stored_bytes"] == analytic
    metrics = json.loads((final.out / "metrics.json").read_text())
    assert KEYS | {"val_ppl", "steps", "seconds", "trial"} <= set(metrics) and metrics["steps"] == 12
    assert metrics["test_ppl"] == pytest.approx(after, rel=1e-4)
    assert metrics["ratio"] == pytest.approx(dense_bytes(dense) / analytic)
    assert json.loads((final.out / "plan.json").read_text()) == plan_to_json(parse_plan(MIXED))


def test_eval_json_prints_one_object_with_the_required_keys(trained, capsys):
    _, final = trained
    assert main(["eval", str(final.out), "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert KEYS <= set(result) and all(math.isfinite(result[k]) and result[k] > 0 for k in KEYS)
    assert result["test_ppl"] == pytest.approx(final.metrics["test_ppl"], rel=1e-4)
    assert result["stored_bytes"] == final.metrics["stored_bytes"]


def test_eval_of_a_dense_folder(tiny_model_dir, text_file, capsys):
    result = autoshrink.evaluate(str(tiny_model_dir), data=str(text_file))
    model = autoshrink.load(str(tiny_model_dir))
    # The size of its export, header included: a little more than its fp32 parameters.
    assert result["stored_bytes"] == autoshrink.stored_bytes(model) > dense_bytes(model)
    assert result["ratio"] == dense_bytes(model) / result["stored_bytes"]
    assert main(["eval", str(tiny_model_dir), "--data", str(text_file)]) == 0
    assert "test ppl" in capsys.readouterr().out


class Interrupted(Exception):
    """A training killed from outside, right after one of its validations."""


def _stop_at(step: int):
    def on_eval(at: int, val: float) -> None:
        if at == step:
            raise Interrupted

    return on_eval


def test_train_resumes_from_its_checkpoint(tiny_model_dir, text_file, tmp_path, monkeypatch):
    run = _run(tmp_path / "run", tiny_model_dir, text_file)
    out = tmp_path / "final"
    with pytest.raises(Interrupted):  # a run killed after its validation at step 6
        train_trial(run, TrainConfig(steps=12, evals=4, out=out), on_eval=_stop_at(6))
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6 and not (out / "model.safetensors").exists()
    lengths = []
    train_module = sys.modules["autoshrink.final.train"]
    real = train_module.train_lm
    monkeypatch.setattr(
        train_module,
        "train_lm",
        lambda model, tr, va, cfg, **kw: (
            lengths.append(cfg.steps - cfg.schedule_from),
            real(model, tr, va, cfg, **kw),
        )[1],
    )
    again = train_trial(run, TrainConfig(steps=12, evals=4, out=out))
    assert lengths == [6] and again.metrics["resumed_from"] == 6 and again.metrics["steps"] == 12
    assert [h["step"] for h in again.metrics["history"] if h["step"]] == [3, 6, 9, 12]  # continued, not restarted
    code = sys.modules["autoshrink.provenance"].source_commit()
    assert again.metrics["commits"] == [code, code]  # the code of each segment: the killed one and the resume
    more = train_trial(run, TrainConfig(steps=16, evals=4, out=out))  # more steps: continues from 12
    assert lengths == [6, 4] and more.metrics["resumed_from"] == 12 and more.metrics["steps"] == 16
    assert len(more.metrics["commits"]) == 3
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 16


def test_a_run_killed_after_validating_its_start_keeps_one_entry_per_step(tiny_model_dir, text_file, tmp_path):
    from autoshrink.final.train import train_plan

    dense = autoshrink.load(str(tiny_model_dir))
    lm = load_lm_data(str(text_file), vocab=dense.vocab)
    plan = {"rnn.0.hh": {"method": "lowrank", "rank": 4}}  # no ramp: its start is validated at step 0
    out = tmp_path / "final"
    with pytest.raises(Interrupted):  # a run killed after validating its start
        train_plan(dense, lm, plan, out, 6, label="x", evals=2, on_eval=_stop_at(0), calibration_tokens=0)
    assert [h["step"] for h in json.loads((out / "checkpoint" / "state.json").read_text())["history"]] == [0]
    again = train_plan(dense, lm, plan, out, 6, label="x", evals=2, calibration_tokens=0)
    steps = [h["step"] for h in again.metrics["history"]]
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 6


def test_a_resumed_final_training_stops_on_the_patience_its_earlier_validations_used_up(
    tiny_model_dir, text_file, tmp_path
):
    from autoshrink.final.train import train_plan

    dense = autoshrink.load(str(tiny_model_dir))
    lm = load_lm_data(str(text_file), vocab=dense.vocab)
    plan = {"rnn.0.hh": {"method": "lowrank", "rank": 4}}
    out = tmp_path / "final"
    with pytest.raises(Interrupted):  # killed after its validation at step 4
        train_plan(dense, lm, plan, out, 40, label="x", evals=10, on_eval=_stop_at(4), calibration_tokens=0)
    path = out / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    # as if the start had been the best and two validations since had not beaten it
    state["history"] = [
        {"step": 0, "val_ppl": 1.0, "fraction": 0.0},
        {"step": 2, "val_ppl": 2.0, "fraction": 0.05},
        {"step": 4, "val_ppl": 3.0, "fraction": 0.1},
    ]
    state["best_val_ppl"] = 1.0
    path.write_text(json.dumps(state))
    said = []
    again = train_plan(dense, lm, plan, out, 40, label="x", evals=10, calibration_tokens=0, log=said.append)
    # patience 3: one more validation (step 8), then the cooldown (0.2 x 40 steps) and the stop
    assert again.metrics["stopped"] == "plateau" and again.metrics["steps"] == 16
    assert again.metrics["cooldown_from"] == 8
    assert any("cooled down from step 8; stopped at step 16" in line for line in said)
    lines = []
    rerun = train_plan(dense, lm, plan, out, 40, label="x", evals=10, calibration_tokens=0, log=lines.append)
    assert rerun.metrics["steps"] == 16 and rerun.metrics["stopped"] == "plateau"  # the same command trains nothing
    assert any("stopped at its plateau at step 16" in line for line in lines)
    more = train_plan(dense, lm, plan, out, 44, label="x", evals=10, calibration_tokens=0)
    # a new cap is a new request: it trains on, patience counted afresh from the best (validations at
    # 20, 24, 28 do not beat it), then a new cooldown of 0.2 x 44 steps: 28 + 9
    assert more.metrics["steps"] == 37 and more.metrics["cooldown_from"] == 28


def test_only_validations_at_the_stored_form_carry_their_patience_into_a_resume():
    """A validation made mid-ramp (a denser model than the one stored) is no bar to beat; a
    checkpoint without fractions (older) carries nothing."""
    from autoshrink.final.train import _settled

    history = [
        {"step": 4, "val_ppl": 1.0, "fraction": 0.1},  # mid-ramp: too good to be the bar
        {"step": 8, "val_ppl": 3.0, "fraction": 0.5},
        {"step": 12, "val_ppl": 2.5, "fraction": 0.6},
    ]
    assert _settled(history, 0.5) == ((8, 3.0), (12, 2.5))
    assert _settled([{"step": 4, "val_ppl": 1.0}], 0.0) == ()


def test_trial_choice(tiny_model_dir, text_file, tmp_path):
    run = _run(tmp_path / "run", tiny_model_dir, text_file)
    assert choose_trial(run, "best")[0] == 0  # lowest val ppl on the front (3 is lower but over budget)
    assert choose_trial(run, 2)[0] == 2 and choose_trial(run, "2")[0] == 2
    assert choose_trial(run, "smallest:8.5")[0] == 0 and choose_trial(run, "smallest:100")[0] == 2
    for bad, match in (
        (1, "PRUNED"),
        (3, "over budget"),
        (9, "no trial 9"),
        ("smallest:1", "val ppl <= 1"),
        ("worst", "use best"),
    ):
        with pytest.raises(UserError, match=match):
            choose_trial(run, bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "{run}", "--trial", "1"],
        ["train", "{run}", "--trial", "7"],
        ["train", "{tmp}/nowhere"],
        ["train", "{tmp}"],
        ["eval", "{tmp}/nowhere"],
        ["train", "{run}", "--steps", "0"],
    ],
)
def test_bad_train_and_eval_input_is_one_line_and_exit_2(argv, tiny_model_dir, text_file, tmp_path, capsys):
    run = _run(tmp_path / "run", tiny_model_dir, text_file)
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "Traceback" not in err[0]


def test_cli_train_then_eval(tiny_model_dir, text_file, tmp_path, capsys):
    run = _run(tmp_path / "run", tiny_model_dir, text_file)
    assert (
        main(
            [
                "train",
                str(run),
                "--trial",
                "2",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "out"),
                "--device",
                "cpu",
                "--distill",
            ]
        )
        == 0
    )
    assert "trial 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["trial"] == 2
    assert main(["eval", str(tmp_path / "out")]) == 0
    assert "test ppl" in capsys.readouterr().out


def test_lightrnn_reallocation_rematches_words_from_training_loss(tiny_model_dir, text_file):
    """The LightRNN bootstrap: costs summed over training text never rise after re-matching."""
    import autoshrink
    from autoshrink.data import load_lm_data
    from autoshrink.methods import CompressedWeight
    from autoshrink.final.train import tell_validation

    model = autoshrink.load(str(tiny_model_dir))
    data = load_lm_data(str(text_file), vocab=model.vocab)
    small = autoshrink.compress(model, {"decoder": {"method": "lightrnn"}})
    head = next(m for m in small.modules() if isinstance(m, CompressedWeight))
    lines = tell_validation(small, data.train, fraction=0.0, batch_size=4, bptt=10)
    assert len(lines) == 1 and "LightRNN reallocation" in lines[0]
    assert tell_validation(small, data.train, fraction=0.9, batch_size=4, bptt=10) == []  # only in the first half
    cost_before, cost_after = head.last_reallocation
    assert cost_after <= cost_before
    cells = head.row_of * head.cols + head.col_of
    assert len(set(cells.tolist())) == len(cells)  # still one word per cell
    # The allocation is model state: checkpoints and the best-state restore carry it.
    assert any(k.endswith("row_of") for k in small.state_dict()) and any(
        k.endswith("col_of") for k in small.state_dict()
    )


def test_cli_train_distill_weight_reaches_the_loss_and_is_recorded(
    tiny_model_dir, text_file, tmp_path, capsys, monkeypatch
):
    run = _run(tmp_path / "run", tiny_model_dir, text_file)
    train_module = sys.modules["autoshrink.final.train"]
    real, weights = train_module.train_lm, []
    monkeypatch.setattr(
        train_module,
        "train_lm",
        lambda model, tr, va, cfg, **kw: (weights.append(cfg.distill_weight), real(model, tr, va, cfg, **kw))[1],
    )
    out = tmp_path / "out"
    args = ["train", str(run), "--trial", "2", "--steps", "2", "--out", str(out), "--device", "cpu"]
    assert main([*args, "--distill-weight", "1"]) == 0
    assert weights == [1.0] and json.loads((out / "metrics.json").read_text())["distill_weight"] == 1.0
    assert main([*args, "--out", str(tmp_path / "plain"), "--no-distill"]) == 0
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["distill_weight"] == 0.0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "bad"), "--distill-weight", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--distill-weight must be in (0, 1]" in err
    assert not (tmp_path / "bad").exists()
    # A resume goes on with the weight its checkpoint began with; another one is refused, unharmed.
    more = ["--out", str(out), "--distill-weight"]
    assert main([*args[:-4], "--steps", "3", *more, "1"]) == 0
    state = (out / "checkpoint" / "state.json").read_text()
    assert json.loads(state)["step"] == 3 and json.loads(state)["recipe"]["distill_weight"] == 1.0
    capsys.readouterr()
    assert main([*args[:-4], "--steps", "4", *more, "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained with distill_weight 1.0, this call asks 0.5" in err
    assert (out / "checkpoint" / "state.json").read_text() == state
