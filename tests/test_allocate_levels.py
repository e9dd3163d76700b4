"""Option levels: geometric in bytes, each the largest setting within its target, no duplicates."""

from __future__ import annotations

import pytest
import torch

from autoshrink.allocate.levels import site_levels, site_options
from autoshrink.plan.fit import largest_within
from autoshrink.errors import UserError
from autoshrink.methods.groupreduce import GroupReduceConfig
from autoshrink.methods.lowrank import LowRankConfig
from autoshrink.methods.quant import QuantConfig
from autoshrink.plan import method_bytes
from autoshrink.sites import Site

SOFTMAX = Site("decoder", "softmax", (1000, 64), bias=True)
MATRIX = Site("rnn.0.hh", "recurrent", (256, 64), bias=True)
FREQS = 1.0 / torch.arange(1, 1001, dtype=torch.float)


def test_lowrank_levels_are_distinct_increasing_under_dense_and_each_the_largest_within_its_bytes():
    base = LowRankConfig(bits=4, group_size=32)
    levels = site_levels(SOFTMAX, base, levels=10)
    sizes = [method_bytes(SOFTMAX, c) for c in levels]
    assert 5 <= len(levels) <= 10
    assert sizes == sorted(set(sizes))  # distinct, smallest first
    assert sizes[-1] < SOFTMAX.dense_bytes
    # The ladder starts at the first target the method can meet (rank 1 pays a scale per row).
    targets = [0.01 * (0.95 / 0.01) ** (i / 9) * SOFTMAX.dense_bytes for i in range(10)]
    assert sizes[0] <= min(t for t in targets if t >= method_bytes(SOFTMAX, base.replace(rank=1)))
    for cfg, size in zip(levels, sizes):
        assert cfg.bits == 4 and cfg.group_size == 32  # the other knobs are the base's
        assert cfg.rank <= 64  # written at the rank that gives the bytes, not a clipped huge one
        assert method_bytes(SOFTMAX, cfg.replace(rank=cfg.rank + 1)) > size or cfg.rank == 64
        assert method_bytes(SOFTMAX, largest_within(SOFTMAX, base, size)) == size


def test_levels_step_roughly_geometrically():
    sizes = [method_bytes(MATRIX, c) for c in site_levels(MATRIX, LowRankConfig(bits=32), levels=8)]
    ratios = [b / a for a, b in zip(sizes, sizes[1:])]
    assert max(ratios) < 4 * min(ratios)


def test_quant_levels_are_its_bits_and_vocab_methods_skip_matrices():
    bits = [c.bits for c in site_levels(MATRIX, QuantConfig(), levels=12)]
    assert bits == sorted(set(bits)) and set(bits) <= {2, 3, 4, 5, 6, 7, 8, 16}
    assert 16 in bits and 2 in bits
    assert site_levels(MATRIX, GroupReduceConfig(), levels=10) == []
    assert site_levels(SOFTMAX, GroupReduceConfig(blocks=4), levels=10, freqs=FREQS)


def test_site_options_by_role_and_for_all_sites():
    sites = [SOFTMAX, MATRIX, Site("encoder2", "embedding", (1000, 64), tied_with="decoder")]
    bases = {"softmax": [GroupReduceConfig()], "recurrent": [QuantConfig()]}
    by_role = site_options(sites, bases, levels=4, freqs=FREQS)
    assert set(by_role) == {"decoder", "rnn.0.hh"}  # a tied partner is its owner's
    assert {c.method for c in by_role["decoder"]} == {"groupreduce"}
    assert {c.method for c in by_role["rnn.0.hh"]} == {"quant"}
    both = site_options(sites, [LowRankConfig(bits=8), GroupReduceConfig()], levels=4, freqs=FREQS)
    assert {c.method for c in both["decoder"]} == {"lowrank", "groupreduce"}
    assert {c.method for c in both["rnn.0.hh"]} == {"lowrank"}


def test_bad_level_settings_are_user_errors():
    with pytest.raises(UserError, match="levels"):
        site_levels(MATRIX, QuantConfig(), levels=0)
    with pytest.raises(UserError, match="smallest"):
        site_levels(MATRIX, QuantConfig(), smallest=0.5, largest=0.1)


def test_a_cap_keeps_every_level_within_it_and_spends_the_levels_below_it():
    base = LowRankConfig(bits=8)
    full = site_levels(SOFTMAX, base, levels=8)
    cap = 0.1 * SOFTMAX.dense_bytes
    capped = site_levels(SOFTMAX, base, levels=8, cap=int(cap))
    assert all(method_bytes(SOFTMAX, c) <= cap for c in capped)
    assert len(capped) >= len([c for c in full if method_bytes(SOFTMAX, c) <= cap]) + 2  # finer steps
    assert site_levels(SOFTMAX, base, levels=8, cap=10) == []


def test_zoom_fills_the_gaps_next_to_the_chosen_level_with_the_same_base():
    from autoshrink.allocate.levels import zoom_levels

    base = LowRankConfig(bits=4)
    levels = site_levels(MATRIX, base, levels=6) + site_levels(MATRIX, base.replace(bits=8), levels=6)
    fours = [c for c in levels if c.bits == 4]
    chosen = fours[2]
    below, above = method_bytes(MATRIX, fours[1]), method_bytes(MATRIX, fours[3])
    zoomed = zoom_levels(MATRIX, chosen, levels, per_gap=3)
    sizes = [method_bytes(MATRIX, c) for c in zoomed]
    assert all(c.bits == 4 for c in zoomed)  # the chosen base, not the 8-bit levels
    assert sizes == sorted(set(sizes)) and all(below < s < above for s in sizes)
    assert method_bytes(MATRIX, chosen) not in sizes
    assert any(s < method_bytes(MATRIX, chosen) for s in sizes) and any(s > method_bytes(MATRIX, chosen) for s in sizes)
    assert len(zoomed) == 6  # three in each gap: ranks 9 < 14, 19, 24 < 29 < 37, 46, 55 < 64
    # the top level has no gap above it; a method sized by its bits gets no zoom
    top = zoom_levels(MATRIX, fours[-1], levels, per_gap=3)
    assert top and all(method_bytes(MATRIX, c) < method_bytes(MATRIX, fours[-1]) for c in top)
    assert zoom_levels(MATRIX, QuantConfig(bits=4), [QuantConfig(bits=b) for b in (2, 4, 8)]) == []
