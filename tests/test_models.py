from __future__ import annotations

import torch
from torch import nn

from autoshrink.models import discover_sites
from autoshrink.models.lstm_lm import LSTMLayer, LSTMLM, LSTMLMConfig
from autoshrink.models.presets import PRESETS
from autoshrink.plan import dense_bytes


def test_reference_preset_has_the_benchmark_size():
    model = PRESETS["kjv-lstm"].build(10_002)
    assert sum(p.numel() for p in model.parameters()) == 6_183_698
    assert dense_bytes(model) == 4 * 6_183_698


def test_reference_sites_and_roles():
    model = LSTMLM(LSTMLMConfig(50, 8, 6, 2))
    sites = {s.name: s for s in discover_sites(model)}
    assert list(sites) == ["encoder", "rnn.0.ih", "rnn.0.hh", "rnn.1.ih", "rnn.1.hh", "decoder"]
    assert sites["encoder"].role == "embedding" and sites["encoder"].shape == (50, 8)
    assert sites["rnn.0.ih"].role == "recurrent" and sites["rnn.0.ih"].shape == (24, 8)
    assert sites["rnn.1.ih"].shape == (24, 6) and sites["rnn.0.hh"].shape == (24, 6)
    assert sites["decoder"].role == "softmax" and sites["decoder"].shape == (50, 6) and sites["decoder"].bias
    # Sites plus the LSTM biases are the whole model.
    extra = sum(4 * s.shape[0] for s in sites.values() if s.role == "recurrent")
    assert sum(s.dense_bytes for s in sites.values()) == dense_bytes(model)
    assert extra > 0


def test_fused_lstm_path_equals_the_step_loop_used_by_compressed_layers():
    torch.manual_seed(0)
    layer = LSTMLayer(8, 6)
    x, state = torch.randn(5, 3, 8), (torch.randn(3, 6), torch.randn(3, 6))
    fast, (h1, c1) = layer(x, state)

    class Wrapped(nn.Module):  # any non-Linear module takes the step loop
        def __init__(self, lin):
            super().__init__()
            self.lin = lin

        def forward(self, v):
            return self.lin(v)

    layer.hh = Wrapped(layer.hh)
    slow, (h2, c2) = layer(x, state)
    torch.testing.assert_close(fast, slow)
    torch.testing.assert_close(c1, c2)


def test_lm_forward_shapes_and_state_carry():
    model = LSTMLM(LSTMLMConfig(30, 8, 8, 2))
    ids = torch.randint(0, 30, (7, 3))
    logits, state = model(ids)
    assert logits.shape == (7, 3, 30) and len(state) == 2
    model.eval()
    full, _ = model(ids)
    first, st = model(ids[:4])
    second, _ = model(ids[4:], st)
    torch.testing.assert_close(torch.cat([first, second]), full)


def test_generic_discovery_of_any_torch_module_with_ties():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(40, 8)
            self.proj = nn.Linear(8, 16)
            self.head = nn.Linear(8, 40, bias=False)
            self.head.weight = self.emb.weight  # tied

    sites = {s.name: s for s in discover_sites(Toy())}
    assert sites["emb"].role == "embedding"
    assert sites["proj"].role == "linear" and sites["proj"].shape == (16, 8)
    assert sites["head"].role == "softmax" and sites["head"].tied_with == "emb"


def test_compressed_lstm_matrices_run_fused_with_the_same_result_and_gradients():
    from autoshrink.plan import compress

    torch.manual_seed(0)
    model = compress(
        LSTMLM(LSTMLMConfig(30, 8, 8, 1, 0.0)),
        {"rnn.0.hh": {"method": "lowrank", "rank": 3}, "rnn.0.ih": {"method": "quant", "bits": 6}},
    )
    ids = torch.randint(0, 30, (6, 2))
    fused, _ = model(ids)

    class NoBuild(nn.Module):  # hides dense_parameters: the layer falls back to its step loop
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, v):
            return self.inner(v)

    layer = model.rnn[0]
    ih, hh = layer.ih, layer.hh
    layer.ih, layer.hh = NoBuild(ih), NoBuild(hh)
    looped, _ = model(ids)
    torch.testing.assert_close(fused, looped, atol=1e-5, rtol=1e-5)
    layer.ih, layer.hh = ih, hh
    model(ids)[0].sum().backward()
    assert hh.compressed.u.grad is not None and hh.compressed.u.grad.abs().sum() > 0
