"""Export and load of compressed models: bytes on disk == claimed bytes == the plan's, exact round trip,
and bad folders as one UserError."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import autoshrink
from autoshrink.cli import main
from autoshrink.errors import UserError
from autoshrink.final.export import FORMAT, export_tensors, file_bytes, load_compressed, save_compressed
from autoshrink.methods import safetensors_file_bytes, tensors_bytes
from autoshrink.models import discover_sites
from autoshrink.plan import ModelFile, compress, parse_plan, plan_stored_bytes, stored_bytes
from autoshrink.plan.bytes import FILE_METADATA

MIXED = {
    "encoder": {"method": "lowrank", "rank": 4, "bits": 8},
    "rnn.0.ih": {"method": "quant", "bits": 3},
    "rnn.0.hh": {"method": "prune", "density": 0.3, "bits": 8},
    "rnn.1.ih": {"method": "kronecker", "density": 0.05, "bits": 8},
    "rnn.1.hh": {"method": "lowrank", "rank": 4, "bits": 6},
    "decoder": {"method": "groupreduce", "blocks": 3, "rank": 4, "bits": 6},
}
OTHERS = {
    "encoder": {"method": "hash", "chunks": 2, "pool": 64, "bits": 8},
    "rnn.0.ih": {"method": "tt", "cores": 2, "rank": 3, "bits": 16},
    "rnn.1.hh": {"method": "quant", "bits": 4, "group_size": 8},
    "decoder": {"method": "lightrnn", "bits": 8},
}  # rnn.0.hh and rnn.1.ih stay dense


@pytest.fixture(scope="module")
def dense(tiny_model_dir):
    return autoshrink.load(str(tiny_model_dir))


def _export(dense, plan, folder):
    torch.manual_seed(0)
    small = compress(dense, plan, freqs=dense.vocab.freqs).eval()
    save_compressed(small, plan, folder, dense.meta, {"note": "test"})
    return small


@pytest.mark.parametrize("plan", [MIXED, OTHERS], ids=["mixed", "others"])
def test_exported_bytes_equal_claimed_and_plan_bytes_and_load_is_exact(dense, plan, tmp_path):
    small = _export(dense, plan, tmp_path / "out")
    tensors = load_file(str(tmp_path / "out" / "model.safetensors"))
    analytic = plan_stored_bytes(discover_sites(dense), parse_plan(plan), dense.vocab.freqs)
    on_disk = os.path.getsize(tmp_path / "out" / "model.safetensors")
    assert on_disk == file_bytes(tmp_path / "out") == stored_bytes(small) == analytic  # the header counted
    assert tensors_bytes(tensors) < analytic
    assert "rnn.0.ih.bias" in tensors and any(k.startswith("rnn.1.hh.") for k in tensors)  # <site>.<name> keys
    loaded = autoshrink.load(str(tmp_path / "out"))  # the API dispatches on model.json's format
    assert loaded.meta["format"] == FORMAT and loaded.vocab.words == dense.vocab.words
    assert stored_bytes(loaded) == analytic
    ids = torch.randint(len(dense.vocab), (12, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], small(ids)[0], rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "out" / "plan.json").read_text()) == {k: parse_plan(plan)[k].to_dict() for k in plan}
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert [s["name"] for s in meta["sites"]] == [s.name for s in discover_sites(dense)]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == {"note": "test"}


def test_a_weight_shared_by_tied_sites_is_exported_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 8)
            self.mid = nn.Linear(8, 8)
            self.head = nn.Linear(8, 40, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.mid(self.emb(ids)))

    model = Tied()
    small = compress(model, {"emb": {"method": "lowrank", "rank": 2, "bits": 8}})
    tensors = export_tensors(small)
    assert safetensors_file_bytes(tensors, FILE_METADATA) == stored_bytes(small)
    plan = parse_plan({"emb": {"method": "lowrank", "rank": 2, "bits": 8}})
    assert plan_stored_bytes(discover_sites(model), plan, None, ModelFile.of(model)) == stored_bytes(small)
    assert sorted(tensors) == [
        "emb.U.codes",
        "emb.U.min",
        "emb.U.scale",
        "emb.V.codes",
        "emb.V.min",
        "emb.V.scale",
        "mid.bias",
        "mid.weight",
    ]
    dense_tensors = export_tensors(model)  # a dense tied weight: once, under its first name
    assert sorted(dense_tensors) == ["emb.weight", "mid.bias", "mid.weight"]


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "missing_weights", "missing_plan", "edited_plan", "bad_model_json", "extra_tensor"],
)
def test_a_damaged_export_is_one_user_error(dense, damage, tmp_path, capsys):
    out = tmp_path / "out"
    _export(dense, MIXED, out)
    weights = out / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "garbage":
        weights.write_bytes(b"\x00\x01not a safetensors file" * 10)
    elif damage == "missing_weights":
        weights.unlink()
    elif damage == "missing_plan":
        (out / "plan.json").unlink()
    elif damage == "edited_plan":
        (out / "plan.json").write_text(json.dumps({**MIXED, "rnn.1.hh": {"method": "lowrank", "rank": 6, "bits": 6}}))
    elif damage == "bad_model_json":
        (out / "model.json").write_text("{not json")
    elif damage == "extra_tensor":
        from safetensors.torch import save_file

        save_file({**load_file(str(weights)), "rnn.9.extra": torch.zeros(3)}, str(weights))
    with pytest.raises(UserError):
        load_compressed(out)
    assert main(["eval", str(out), "--json"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and "error" in err[0] and "Traceback" not in err[0]
