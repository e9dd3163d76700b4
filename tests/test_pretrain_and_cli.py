from __future__ import annotations

import json
import subprocess
import sys

import pytest

import autoshrink
from autoshrink.cli import main
from autoshrink.final.export import export_tensors
from autoshrink.methods import safetensors_header_bytes, specs_of
from autoshrink.plan.bytes import FILE_METADATA
from autoshrink.models.checkpoint import load_dense
from autoshrink.models.pretrain import cache_dir, pretrained


def test_pretrain_writes_safetensors_and_metadata(tiny_model_dir):
    meta = json.loads((tiny_model_dir / "model.json").read_text())
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert meta["preset"] == "kjv-lstm-tiny" and meta["seed"] == 0
    info = meta["pretrain"]
    assert info["steps"] > 0 and info["tokens_per_s"] > 0
    # A trained model beats the uniform distribution over its vocabulary by far.
    assert info["val_ppl"] < len(meta["vocab"]["words"]) / 4
    model, vocab, _ = load_dense(tiny_model_dir)
    assert model.encoder.num_embeddings == len(vocab)


def test_pretrained_is_cached_and_reused(text_file, monkeypatch):
    model, vocab, meta = pretrained("kjv-lstm-tiny", str(text_file))
    folder = cache_dir("kjv-lstm-tiny", str(text_file), 0)
    assert (folder / "model.safetensors").is_file()
    calls = []
    monkeypatch.setattr("autoshrink.models.pretrain.pretrain", lambda *a, **k: calls.append(a))
    again, _, meta2 = pretrained("kjv-lstm-tiny", str(text_file))
    assert calls == [] and meta2["pretrain"] == meta["pretrain"]


def test_cli_pretrain_tiny_then_sites(text_file, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["pretrain", "--model", "kjv-lstm-tiny", "--data", str(text_file), "--out", str(out)]) == 0
    assert "valid ppl" in capsys.readouterr().out
    meta = json.loads((out / "model.json").read_text())
    assert meta["pretrain"]["command"].startswith("autoshrink pretrain")
    assert main(["sites", "--model", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("encoder", "rnn.0.ih", "rnn.1.hh", "decoder"):
        assert name in printed
    assert "softmax" in printed and "recurrent" in printed


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--budget", "abc"],
        ["search", "--budget", "0x"],
        ["search", "--budget", "-5MB"],
        ["search", "--budget", "25"],
        ["sites", "--model", "/no/such/model"],
        ["pretrain", "--model", "gpt-17"],
        ["pretrain", "--model", "kjv-lstm-tiny", "--data", "/no/such/corpus.txt"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error" in err[0] and "Traceback" not in err[0]


def test_empty_corpus_from_the_command_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    proc = subprocess.run(
        [sys.executable, "-m", "autoshrink", "pretrain", "--model", "kjv-lstm-tiny", "--data", str(empty)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "empty" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["pretrain", "sites", "methods", "search", "front", "train", "eval"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: autoshrink " + command in capsys.readouterr().out


def test_methods_lists_every_method_with_knobs(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("lowrank", "groupreduce", "kronecker", "prune", "quant", "tt", "hash", "lightrnn"):
        assert name in out
    assert "bits=" in out


def test_python_api_loads_a_model_folder(tiny_model_dir):
    model = autoshrink.load(str(tiny_model_dir))
    assert len(autoshrink.sites(model)) == 6
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    assert autoshrink.stored_bytes(model) == fp32 + safetensors_header_bytes(
        specs_of(export_tensors(model)), FILE_METADATA
    )


def test_a_search_seed_does_not_pretrain_the_preset_again(text_file, tmp_path, monkeypatch):
    """--seed is the sampler's and the fine-tuning's: a preset is searched as pretrained (seed 0),
    never pretrained anew for the search's seed (hours for kjv-lstm)."""
    from autoshrink.search.config import SearchConfig
    from autoshrink.search.prepare import load_inputs, target

    pretrained("kjv-lstm-tiny", str(text_file))  # cached at seed 0
    monkeypatch.setattr("autoshrink.models.pretrain.pretrain", lambda *a, **k: pytest.fail("pretrained again"))
    c = SearchConfig(budget="2x", model="kjv-lstm-tiny", data=str(text_file), seed=3, run_dir=tmp_path / "run")
    c = c.resolved({}, tmp_path / "run")
    inputs = load_inputs(c, target(c), {}, lambda line: None)
    assert inputs.dense.meta["seed"] == 0
