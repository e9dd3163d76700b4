"""How the benchmark builds its non-search entrants (docs/benchmark.md, issue 16).

- A single method at its **best storage**: the method applied uniformly with its size knob
  fitted to the budget (budget.uniform_plan) at each storage width of STORAGE_BITS (low-rank and
  GroupReduce also with U stored transposed below 16 bits: `layouts`); the width and layout kept
  are those whose compressed model (the same initialisation as autoshrink's: `compress` with the
  word frequencies) has the lowest validation perplexity on the first SELECT_TOKENS tokens of the
  valid split, before any training: cheap, and the same for every method.
- **Small dense**: the reference architecture with smaller embedding and hidden sizes (equal),
  every site stored in 8 bits (quantisation-aware from the start), the largest that fits the
  budget; trained from scratch by the same recipe, distilled from the dense model.
"""

from __future__ import annotations

import torch
from torch import nn

STORAGE_BITS = (32, 16, 8, 4)
LAYOUT_GROUPS = (128,)  # u_groups the spaces offer (the vocabulary's)
SELECT_TOKENS = 12_000  # as the trials' validation prefix
SMALL_DENSE_BITS = 8
SMALL_DENSE_DROPOUT = 0.1  # a model of tens of dimensions underfits; little dropout


def layouts(base_cfg: dict) -> list[dict]:
    """The storage layouts a single method is tried in besides its widths: low-rank's and
    GroupReduce's U in rows and transposed, as the spaces offer them (LAYOUT_GROUPS)."""
    if base_cfg["method"] in ("lowrank", "groupreduce") and "u_groups" not in base_cfg:
        return [{}, *({"u_groups": g} for g in LAYOUT_GROUPS)]
    return [{}]


def best_storage_plan(setup, row, base_cfg: dict) -> tuple[dict | None, list[dict]]:
    """(plan JSON at the best storage width and layout or None when none reaches the budget, the
    candidates tried: bits, layout knobs, val_ppl at initialisation, stored bytes)."""
    from autoshrink.plan.fit import best_width
    from autoshrink.methods import config_from_dict
    from autoshrink.plan import plan_stored_bytes, untrained_perplexity

    def val_ppl(plan: dict) -> float:
        return untrained_perplexity(
            setup.dense, plan, setup.lm.valid[:SELECT_TOKENS], setup.lm.vocab.freqs, None, setup.seed
        )

    widths = (base_cfg["bits"],) if base_cfg["method"] == "quant" or "bits" in base_cfg else STORAGE_BITS
    freqs = setup.lm.vocab.freqs
    candidates, records = [], []
    for layout in layouts(base_cfg):
        coded = [b for b in widths if b < 16 or not layout]  # a layout of codes and scales: below 16 bits
        if not coded:
            continue
        base = config_from_dict({**base_cfg, **layout, "bits": coded[0]})
        _, tried = best_width(
            base, coded, setup.sites, setup.max_bytes(row), val_ppl, freqs, setup.model_file, row.roles
        )
        for b, v, p in tried:
            stored = plan_stored_bytes(setup.sites, p, freqs, setup.model_file)
            records.append({"bits": b, **layout, "init_val_ppl": v, "stored_bytes": stored})
            candidates.append((v, p))
    best = min(candidates, key=lambda c: c[0], default=None)
    return (None if best is None else {k: v.to_dict() for k, v in best[1].items()}), records


def _small_model(dense: nn.Module, dim: int) -> nn.Module:
    from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig

    cfg = dense.config
    torch.manual_seed(0)
    model = LSTMLM(LSTMLMConfig(cfg.vocab_size, dim, dim, cfg.layers, SMALL_DENSE_DROPOUT))
    model.vocab = dense.vocab
    model.meta = {**dense.meta, "config": model.config.to_dict(), "pretrain": None}
    return model


def small_dense_plan(model: nn.Module) -> dict:
    from autoshrink.models import discover_sites

    return {s.name: {"method": "quant", "bits": SMALL_DENSE_BITS} for s in discover_sites(model) if s.tied_with is None}


def small_dense(setup, row) -> tuple[nn.Module, dict, int] | None:
    """(untrained small model, its 8-bit plan, dim): the largest equal embedding/hidden size
    whose stored bytes fit the row's limit (whole-model rows only)."""
    from autoshrink.plan import compress, stored_bytes

    if row.roles is not None or not hasattr(setup.dense, "config"):
        return None
    limit = setup.max_bytes(row)

    def fits(dim: int) -> bool:
        model = _small_model(setup.dense, dim)
        return stored_bytes(compress(model, small_dense_plan(model))) <= limit

    lo, hi = 0, setup.dense.config.hidden + 1  # fits(lo) holds (0 stands for "none"); never above the reference
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo == 0:
        return None
    model = _small_model(setup.dense, lo)
    return model, small_dense_plan(model), lo
