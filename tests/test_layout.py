"""The package's import graph keeps the one-way flow of docs/design.md (bench/import_graph.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from autoshrink.bench import import_graph


def test_the_package_has_no_cycle_no_upward_import_and_no_private_name_across_modules():
    assert import_graph.problems() == []


def test_the_checker_finds_a_cycle_an_api_import_an_upward_import_and_a_private_name():
    graph = {
        "autoshrink.plan.apply": {"autoshrink.search.study": {"x"}},  # plan reaching up into search
        "autoshrink.search.study": {"autoshrink.plan.apply": {"*"}, "autoshrink.api": {"load"}},
        "autoshrink.final.train": {"autoshrink.search.run_folder": {"_private"}},
        "autoshrink.search.run_folder": {},
        "autoshrink.api": {},
    }
    found = "\n".join(import_graph.problems(graph))
    assert "autoshrink.plan.apply -> autoshrink.search.study -> autoshrink.plan.apply" in found
    assert "autoshrink.search.study imports autoshrink.api" in found
    assert "autoshrink.plan.apply (plan) imports autoshrink.search.study (search)" in found
    assert "private name(s) _private" in found


def test_every_module_is_in_a_layer():
    unplaced = [
        m
        for m in import_graph.modules()
        if m.count(".") >= 1 and import_graph.layer(m) is None and m != "autoshrink.__main__"
    ]
    assert unplaced == [], "a new top-level module needs its place in LAYERS"


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed")
def test_ruff_is_clean():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(["ruff", "check", "autoshrink", "tests"], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:]
