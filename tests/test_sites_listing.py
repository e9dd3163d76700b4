"""`sites` on dense, compressed and exported models: a compressed site is listed with its method and bytes."""

from __future__ import annotations

import pytest

import autoshrink
from autoshrink.cli import main
from autoshrink.final.export import export_tensors, save_compressed
from autoshrink.methods import safetensors_header_bytes, specs_of
from autoshrink.models import discover_sites
from autoshrink.plan.bytes import FILE_METADATA

PLAN = {"decoder": {"method": "lowrank", "rank": 4, "bits": 8}, "rnn.0.hh": {"method": "prune", "density": 0.3}}


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    dense = autoshrink.load(str(tiny_model_dir))
    small = autoshrink.compress(dense, PLAN)
    export = save_compressed(small, PLAN, tmp_path_factory.mktemp("export") / "final", dense.meta, {})
    return dense, small, export


def test_a_dense_model_lists_its_compressible_sites_unchanged(models):
    dense, _, _ = models
    assert autoshrink.sites(dense) == discover_sites(dense)
    assert all(s.method is None and s.stored_bytes is None for s in autoshrink.sites(dense))


@pytest.mark.parametrize("which", ["compressed", "exported"])
def test_compressed_sites_are_listed_with_method_and_stored_bytes(models, which):
    dense, small, export = models
    model = small if which == "compressed" else autoshrink.load(str(export))
    listed = autoshrink.sites(model)
    assert [s.name for s in listed] == [s.name for s in discover_sites(dense)]  # none dropped, model order kept
    by_name = {s.name: s for s in listed}
    for name, cfg in PLAN.items():
        assert by_name[name].method == cfg["method"]
        assert by_name[name].shape == {s.name: s for s in discover_sites(dense)}[name].shape
    # every byte the model stores is some site's, a dense site's fp32 weight and bias, or the file's header
    header = safetensors_header_bytes(specs_of(export_tensors(model)), FILE_METADATA)
    assert autoshrink.stored_bytes(model) - header == sum(s.stored_bytes if s.method else s.dense_bytes for s in listed)
    assert by_name["decoder"].stored_bytes < by_name["decoder"].dense_bytes


def test_cli_sites_on_an_export(models, capsys):
    _, _, export = models
    assert main(["sites", "--model", str(export)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if not line.startswith("whole")}
    assert rows["decoder"][4] == "lowrank" and rows["rnn.0.hh"][4] == "prune" and rows["encoder"][4] == "dense"
    assert f"{autoshrink.stored_bytes(autoshrink.load(str(export))):,} stored bytes" in out
