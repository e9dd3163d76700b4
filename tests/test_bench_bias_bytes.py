"""bench/bias_bytes: the biases' bytes, what 8-bit codes would free, the rounding, the report."""

from __future__ import annotations

import torch

from autoshrink.bench import bias_bytes
from autoshrink.sites import Site

SITES = [
    Site("encoder", "embedding", (100, 16)),  # no bias
    Site("rnn.0.ih", "recurrent", (64, 16), bias=True),
    Site("decoder", "softmax", (100, 16), bias=True),
]


def test_bias_bytes_and_what_8_bit_codes_would_free():
    assert bias_bytes.bias_bytes(SITES) == 4 * (64 + 100)
    codes = (64 + 100) + 2 * (bias_bytes.SCALE_BYTES + bias_bytes.HEADER_BYTES)
    assert bias_bytes.freed_bytes(SITES) == 4 * (64 + 100) - codes


def test_rounding_keeps_the_ends_uses_at_most_256_levels_and_is_idempotent():
    t = torch.linspace(-0.93, 1.87, 10_002) + 0.001 * torch.randn(10_002, generator=torch.Generator().manual_seed(0))
    r = bias_bytes.round_to_bits(t)
    step = float(t.max() - t.min()) / 255
    assert len(torch.unique(r)) <= 256 and float((r - t).abs().max()) <= step / 2 + 1e-6
    assert torch.allclose(r.min(), t.min()) and torch.allclose(r.max(), t.max())
    assert torch.allclose(bias_bytes.round_to_bits(r), r, atol=1e-6)


def test_the_report_computes_shares_and_the_verdict_line_from_the_figures():
    m = {
        "row": "100x",
        "bias_bytes": 56_392,
        "freed": 41_854,
        "limits": {"25x": 989_391, "100x": 247_347},
        "gain": {"autoshrink": (65.88, 61.09, 288_723), "lowrank": (71.66, 68.0, 288_000)},
        "dense": 38.49,
        "biases": [("rnn.0.ih", 1024), ("decoder", 10_002)],
        "search": (8, 80, 200),
        "cost": {"25x": (40.927, 40.9245), "100x": (65.884, 65.887)},
    }
    text = bias_bytes.markdown(m, "cmd")
    assert "| 25x | 989,391 | 5.7% | 40.927 | 40.925 |" in text and "rnn.0.ih 1,024, decoder 10,002 values" in text
    assert "(8 trials of 80 steps; 200 final steps)" in text
    assert "| 100x | 247,347 | 22.8% | 65.884 | 65.887 |" in text
    assert "| autoshrink | 65.88 | 61.09 | 288,723 |" in text
    assert (
        "by at most 0.0030" in text
    )  # the largest change either way and "from 65.88 to 61.09 (dense control 38.49)" in text


def test_without_the_quick_tier_s_entrants_it_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    import pytest

    monkeypatch.setattr(bias_bytes, "WORKS", {"quick": tmp_path / "empty"})
    with pytest.raises(SystemExit) as e:
        bias_bytes.main(["--row", "50x", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no 50x autoshrink result" in err and err.count("\n") == 1
    assert not (tmp_path / "r.md").exists()
