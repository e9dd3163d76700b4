"""Shared fixtures: a private model cache and tiny corpora made in the test."""

from __future__ import annotations

import random

import pytest
import torch

# Tiny models run fastest single-threaded, and tests must not fight each other for cores.
torch.set_num_threads(1)

# A few fixed sentences: learnable structure, so a trained model's perplexity drops far below
# the vocabulary size, and compression has something to lose.
_SENTENCES = [
    "the lord said unto moses , go forth into the land .",
    "and they went up out of egypt with all their flocks .",
    "behold the people is one and they have all one language .",
    "and god saw the light , that it was good .",
    "in the beginning god created the heaven and the earth .",
    "and the earth was without form , and void .",
    "and moses went up unto god , and the lord called unto him .",
    "and aaron spake all the words which the lord had spoken unto moses .",
]


def make_corpus_lines(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(_SENTENCES) for _ in range(n_lines)]


def search_argv(model_dir, data, run_dir, budget: str = "4x", **flags) -> list[str]:
    """The argv of `autoshrink search` on a model and corpus into a run folder; each further flag
    as written in Python: trials=2 -> --trials 2, distill=True -> --distill, warm_start=False ->
    --no-warm-start."""
    argv = ["search", "--budget", budget, "--model", str(model_dir), "--data", str(data), "--run-dir", str(run_dir)]
    for name, value in flags.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            argv += [f"--{flag}", str(value)]
    return argv


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AUTOSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n".join(make_corpus_lines(600)) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ptb")
    for split, n, seed in (("train", 500, 0), ("valid", 60, 1), ("test", 60, 2)):
        (folder / f"{split}.txt").write_text("\n".join(make_corpus_lines(n, seed)) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, text_file):
    """kjv-lstm-tiny pretrained on the tiny text file (seconds)."""
    from autoshrink.models.pretrain import pretrain

    return pretrain("kjv-lstm-tiny", str(text_file), epochs=30, out=tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir, text_file):
    """A finished 4-trial search of the tiny model, one per test module: for what reads a run folder."""
    from test_search import SPACE, _search

    folder = tmp_path_factory.mktemp("tiny-run")
    (folder / "space.yaml").write_text(SPACE)
    return _search(tiny_model_dir, text_file, folder / "space.yaml", folder / "run", trials=4, finetune_steps=6)


@pytest.fixture(scope="module")
def bench_setup(tiny_model_dir, text_file, tmp_path_factory):
    """The reference benchmark's Setup on the tiny model and text, 2 training steps per entrant."""
    from autoshrink.bench.reference import Setup

    return Setup(
        str(tiny_model_dir),
        steps=2,
        trials=1,
        finetune_steps=2,
        work=tmp_path_factory.mktemp("bench"),
        data=str(text_file),
    )


@pytest.fixture(autouse=True)
def _no_experiment_folders(monkeypatch, tmp_path):
    """No test takes a training from this machine's experiment folders (bench/reference.EXPERIMENTS)."""
    from autoshrink.bench import reference

    monkeypatch.setattr(reference, "EXPERIMENTS", {t: tmp_path / "experiments" / t for t in reference.EXPERIMENTS})
