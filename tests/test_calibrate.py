"""Calibration: per-site input moments, output-gradient moments and word counts, cached."""

from __future__ import annotations

import torch
from torch import nn

from autoshrink.calibrate import BURN_IN, calibrate, calibration_ids, collect
from autoshrink.models import discover_sites
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig

V, E, H = 40, 8, 12


def _model():
    torch.manual_seed(0)
    model = LSTMLM(LSTMLMConfig(V, E, H, 2, 0.3)).train()  # dropout on: calibration must turn it off
    return model


def _ids(n=3000):
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(1))


def _moment(x: torch.Tensor) -> torch.Tensor:
    x = x.reshape(-1, x.shape[-1]).double()
    return x.T @ x / len(x)


def test_moments_are_those_of_what_each_matrix_multiplies():
    model, ids = _model(), _ids()
    freqs = torch.arange(V, 0, -1).float()
    stats = collect(model, ids, tokens=512, freqs=freqs)
    assert set(stats) == {s.name for s in discover_sites(model)}
    # The reference: the model's own fused path, layer by layer.
    # The reference: the model's own fused path, layer by layer, over the warm-up and the
    # recorded tokens; only the recorded ones count (hh sees h_{t-1}, the last warm-up output first).
    model.eval()
    with torch.no_grad():
        x = model.encoder(calibration_ids(ids, 512, 128, BURN_IN)[:-1])
        for k, layer in enumerate(model.rnn):
            h0 = torch.zeros(x.shape[1], H)
            out, _ = layer(x, (h0, h0))
            torch.testing.assert_close(stats[f"rnn.{k}.ih"].moment, _moment(x[BURN_IN:]))
            torch.testing.assert_close(stats[f"rnn.{k}.hh"].moment, _moment(out[BURN_IN - 1 : -1]))
            torch.testing.assert_close(stats[f"rnn.{k}.ih"].mean, x[BURN_IN:].reshape(-1, x.shape[-1]).double().mean(0))
            x = out
        torch.testing.assert_close(stats["decoder"].moment, _moment(x[BURN_IN:]))
    assert stats["decoder"].tokens == 512
    # Output-gradient statistics: per row for every matrix, full where small; columns of the embedding.
    assert stats["rnn.0.ih"].grad_sq.shape == (4 * H,) and stats["rnn.0.ih"].grad_moment.shape == (4 * H, 4 * H)
    torch.testing.assert_close(stats["rnn.0.ih"].grad_moment.diagonal(), stats["rnn.0.ih"].grad_sq)
    assert stats["decoder"].grad_sq.shape == (V,) and (stats["decoder"].grad_sq > 0).all()
    assert stats["encoder"].moment.shape == (E, E) and stats["encoder"].mean is None
    assert torch.equal(stats["encoder"].freqs, freqs.double()) and torch.equal(stats["decoder"].freqs, freqs.double())
    assert stats["rnn.0.ih"].freqs is None


def test_the_model_is_left_as_it_was():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    collect(model, _ids(), tokens=256)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(type(model.get_submodule(s.name)) in (nn.Linear, nn.Embedding) for s in discover_sites(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_results_are_cached_per_model_and_token_count(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSHRINK_CACHE", str(tmp_path))
    model, ids = _model(), _ids()
    first = calibrate(model, ids, tokens=256)
    files = list((tmp_path / "calibration").iterdir())
    assert len(files) == 1
    again = calibrate(model, ids, tokens=256)  # read back, equal
    for name in first:
        for key in ("moment", "mean", "grad_sq", "grad_moment", "freqs"):
            a, b = getattr(first[name], key), getattr(again[name], key)
            assert (a is None and b is None) or torch.equal(a, b)
        assert first[name].tokens == again[name].tokens
    calibrate(model, ids, tokens=512)
    with torch.no_grad():
        model.decoder.weight.mul_(2)
    calibrate(model, ids, tokens=256)
    assert len(list((tmp_path / "calibration").iterdir())) == 3


def test_data_aware_compression_uses_the_statistics():
    """A whitened low-rank decoder beats the plain one on what it is fitted for: its outputs
    on the calibration inputs."""
    from autoshrink.plan import compress

    model, ids = _model(), _ids()
    stats = collect(model, ids, tokens=512)
    x = model.encoder(calibration_ids(ids, 512, 128, BURN_IN)[:-1])
    for layer in model.rnn:
        x, _ = layer(x, (torch.zeros(x.shape[1], H),) * 2)
    x = x[BURN_IN:].detach()
    errors = {}
    for init in ("plain", "data"):
        small = compress(model, {"decoder": {"method": "lowrank", "rank": 2, "init": init}}, stats=stats)
        with torch.no_grad():
            errors[init] = float((small.decoder(x) - model.decoder(x)).square().sum())
    assert errors["data"] < errors["plain"]
