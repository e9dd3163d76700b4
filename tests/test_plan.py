from __future__ import annotations

import pytest
import torch
from torch import nn

import autoshrink
from autoshrink.errors import UserError
from autoshrink.methods import CompressedWeight
from autoshrink.final.export import export_tensors
from autoshrink.methods import safetensors_header_bytes, specs_of, tensors_bytes
from autoshrink.plan.bytes import FILE_METADATA
from autoshrink.models import discover_sites
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
from autoshrink.plan import compress, dense_bytes, parse_plan, plan_stored_bytes, plan_to_json, stored_bytes


def _model():
    torch.manual_seed(0)
    return LSTMLM(LSTMLMConfig(64, 16, 16, 2, 0.0))


PLAN = {
    "encoder": {"method": "quant", "bits": 4},
    "rnn.0.hh": {"method": "quant", "bits": 8},
    "decoder": {"method": "quant", "bits": 6, "group_size": 8},
}


def test_compress_replaces_only_planned_sites_and_keeps_the_original():
    model = _model()
    small = compress(model, PLAN)
    assert isinstance(model.encoder, nn.Embedding)  # the input model is untouched
    names = {n for n, m in small.named_modules() if isinstance(m, CompressedWeight)}
    assert names == {"encoder.compressed", "rnn.0.hh.compressed", "decoder.compressed"}
    assert [s.name for s in discover_sites(small)] == ["rnn.0.ih", "rnn.1.ih", "rnn.1.hh"]
    logits, _ = small(torch.randint(0, 64, (5, 2)))
    assert logits.shape == (5, 2, 64)


def test_analytic_plan_bytes_equal_model_bytes_and_export():
    model = _model()
    sites = discover_sites(model)
    small = compress(model, PLAN)
    analytic = plan_stored_bytes(sites, parse_plan(PLAN))
    assert stored_bytes(small) == analytic
    # The same count from the exported tensors plus everything left as plain parameters.
    exported = sum(tensors_bytes(m.export()) for m in small.modules() if isinstance(m, CompressedWeight))
    compressed_params = {id(p) for m in small.modules() if isinstance(m, CompressedWeight) for p in m.parameters()}
    plain = sum(p.numel() * 4 for p in small.parameters() if id(p) not in compressed_params)
    header = safetensors_header_bytes(specs_of(export_tensors(small)), FILE_METADATA)  # the file's
    assert exported + plain + header == analytic
    assert analytic < dense_bytes(model)


def test_tied_weights_are_compressed_and_counted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 8)
            self.head = nn.Linear(8, 40, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, ids):
            return self.head(self.emb(ids))

    model = Tied()
    assert stored_bytes(model) == 40 * 8 * 4 + safetensors_header_bytes(specs_of(export_tensors(model)), FILE_METADATA)
    small = compress(model, {"head": {"method": "quant", "bits": 8}})
    assert small.emb.compressed is small.head.compressed
    one = small.emb.compressed
    header = safetensors_header_bytes(specs_of(export_tensors(small)), FILE_METADATA)
    assert stored_bytes(small) == type(one).stored_bytes(one.site, one.config) + header
    with pytest.raises(UserError, match="share one weight"):
        compress(model, {"emb": {"method": "quant", "bits": 8}, "head": {"method": "quant", "bits": 4}})


def test_plan_json_round_trip_and_errors():
    plan = parse_plan(PLAN)
    assert parse_plan(plan_to_json(plan)) == plan
    assert parse_plan('{"decoder": {"method": "quant"}}')["decoder"].bits == 8
    with pytest.raises(UserError, match="unknown site"):
        compress(_model(), {"nope": {"method": "quant"}})
    with pytest.raises(UserError, match="unknown method"):
        parse_plan({"decoder": {"method": "zip"}})
    with pytest.raises(UserError, match="not valid JSON"):
        parse_plan("{oops")


def test_api_compress_passes_word_frequencies_from_the_model_vocab(tiny_model_dir):
    model = autoshrink.load(str(tiny_model_dir))
    small = autoshrink.compress(model, {"decoder": {"method": "groupreduce", "blocks": 2, "rank": 2}})
    gr = small.decoder.compressed
    assert autoshrink.stored_bytes(small) < autoshrink.stored_bytes(model)
    assert gr.nbytes() == tensors_bytes(gr.export())
