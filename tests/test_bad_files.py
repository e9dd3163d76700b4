"""Every file a user passes that is not what it should be (garbage bytes, a truncated SQLite file,
the wrong JSON) is answered with one line on stderr and exit 2, never a traceback."""

from __future__ import annotations

import os
import shutil

import pytest

from autoshrink.cli import main
from conftest import search_argv

GARBAGE = bytes(range(256)) * 12  # not UTF-8, not SQLite, not safetensors


@pytest.fixture(scope="module")
def made(tmp_path_factory, tiny_model_dir, text_file):
    """A finished run with an export, made once; each test breaks a copy."""
    root = tmp_path_factory.mktemp("bad")
    run = root / "run"
    assert main(search_argv(tiny_model_dir, text_file, run, trials=1, finetune_steps=2, sampler="random")) == 0
    assert main(["train", str(run), "--steps", "2", "--evals", "1"]) == 0
    return run


def _truncated_sqlite(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _garbage(path):
    path.write_bytes(GARBAGE)


def _not_an_object(path):
    path.write_text("[1, 2, 3]\n")


CASES = [  # (name, file under the copy, how it is broken, command after the copy's path)
    ("search, garbage study.db", "study.db", _garbage, ["search", "--budget", "4x", "--run-dir", "{run}"]),
    ("search, truncated study.db", "study.db", _truncated_sqlite, ["search", "--budget", "4x", "--run-dir", "{run}"]),
    ("front, garbage study.db", "study.db", _garbage, ["front", "{run}"]),
    ("front, truncated study.db", "study.db", _truncated_sqlite, ["front", "{run}"]),
    ("train, garbage study.db", "study.db", _garbage, ["train", "{run}", "--steps", "2"]),
    ("search, garbage run.json", "run.json", _garbage, ["search", "--budget", "4x", "--run-dir", "{run}"]),
    ("search, run.json not an object", "run.json", _not_an_object, ["search", "--budget", "4x", "--run-dir", "{run}"]),
    ("front, garbage run.json", "run.json", _garbage, ["front", "{run}"]),
    ("eval, garbage weights", "final/model.safetensors", _garbage, ["eval", "{run}/final"]),
    ("eval, garbage plan.json", "final/plan.json", _garbage, ["eval", "{run}/final"]),
    ("eval, garbage model.json", "final/model.json", _garbage, ["eval", "{run}/final"]),
    ("sites, garbage model.json", "final/model.json", _garbage, ["sites", "--model", "{run}/final"]),
    ("train, garbage checkpoint state", "final/checkpoint/state.json", _garbage, ["train", "{run}", "--steps", "3"]),
    (
        "train, checkpoint state not an object",
        "final/checkpoint/state.json",
        _not_an_object,
        ["train", "{run}", "--steps", "3"],
    ),
]


@pytest.mark.parametrize("name, file, damage, argv", CASES, ids=[c[0] for c in CASES])
def test_a_broken_file_is_one_line_and_exit_2(made, tmp_path, name, file, damage, argv, capsys):
    run = tmp_path / "run"
    shutil.copytree(made, run)
    damage(run / file)
    capsys.readouterr()
    assert main([a.format(run=run) for a in argv]) == 2, name
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert os.path.basename(file) in err[0] or "study" in err[0], err  # the line names the file


@pytest.mark.parametrize("flag", ["--space", "--data"])
def test_a_garbage_space_or_corpus_file_is_one_line(tiny_model_dir, text_file, tmp_path, flag, capsys):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(GARBAGE)
    # the bad file's flag comes last, so it is the one argparse keeps
    assert main(search_argv(tiny_model_dir, text_file, tmp_path / "run") + [flag, str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "not" in err[0], err
