"""Evaluation of a model folder or preset (`autoshrink eval`): what a compressed LM costs and loses.

    test_ppl      perplexity over the whole test split
    stored_bytes  the size of model.safetensors, header included: counted from the loaded model
                  (autoshrink.stored_bytes) and, for a compressed export, checked against the file
                  on disk (a preset or dense folder: the size of its export, as a search counts it)
    ratio         dense fp32 bytes of the base architecture / stored bytes (the file's size)
    latency_ms    median CPU wall time of one forward pass, batch 1, 35 tokens (docs/design.md, Budgets),
                  of 20 passes; latency_ms_iqr its interquartile range
    tokens_per_s  evaluation throughput (batch 10 x 35-token windows of the test split), median
                  of 20 windows; tokens_per_s_iqr its interquartile range

`measure` is shared with final training (train.py), so metrics.json and `eval` agree.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from autoshrink.data import LMData, load_lm_data
from autoshrink.errors import UserError
from autoshrink.measure.latency import measure_latency, measure_throughput, reference_input
from autoshrink.models.lstm_lm import LSTMLM
from autoshrink.models.training import evaluate_perplexity
from autoshrink.plan import dense_bytes, stored_bytes


def base_dense_bytes(model: nn.Module) -> int:
    """fp32 bytes of the dense architecture the model was compressed from (the ratio's numerator)."""
    if isinstance(model, LSTMLM):
        return dense_bytes(LSTMLM(model.config))
    return getattr(model, "base_dense_bytes", None) or dense_bytes(model)  # Hugging Face: kept by the adapter


def measure(model: nn.Module, data: LMData, device: str = "cpu") -> dict:
    """test_ppl, stored_bytes, ratio, latency_ms (CPU) and tokens_per_s of a model on `data`."""
    model.eval()
    test = evaluate_perplexity(model, data.test, device=device)
    model.cpu()
    nbytes = stored_bytes(model)
    return {
        "test_ppl": test,
        "stored_bytes": nbytes,
        "ratio": base_dense_bytes(model) / nbytes,
        **measure_latency(model, reference_input(len(data.vocab))).record("latency_ms"),
        **measure_throughput(model, data.test).record("tokens_per_s"),
        "test_tokens": len(data.test),
    }


def corpus_source(name: str | None) -> str | None:
    """`name` if it loads as a corpus here (kjv or an existing path), else None: model.json and
    run.json may hold only a corpus's short key."""
    if not name:
        return None
    return name if name == "kjv" or Path(name).expanduser().exists() else None


def evaluate_dir(path: str | Path, data: str | None = None, device: str = "cpu", model=None) -> dict:
    """Evaluate a compressed export (`autoshrink train`), a dense model folder, or a preset name
    (pretrained on `data`, kjv by default). The corpus is `data`, else the one model.json names.
    `model`: for the export of your own torch model, a fresh instance of its class (see `load`)."""
    from autoshrink.models.load import load
    from autoshrink.final.export import FORMAT as EXPORT_FORMAT, file_bytes
    from autoshrink.models.presets import PRESETS

    name = str(path)
    model = load(name, data=data or "kjv", model=model)
    meta = getattr(model, "meta", {}) or {}
    corpus = data or corpus_source(meta.get("data")) or ("kjv" if name in PRESETS else None)
    if corpus is None:
        raise UserError(
            f"{name}: its model.json names the corpus {meta.get('data')!r}, which is not a path here: "
            f"pass --data (the corpus it was trained on)"
        )
    lm = load_lm_data(corpus, vocab=model.vocab)
    result = measure(model, lm, device=device)
    if meta.get("format") == EXPORT_FORMAT:  # a dense folder's own file is not an export (its metadata differs)
        in_file = file_bytes(name)
        if in_file != result["stored_bytes"]:
            raise UserError(
                f"{name}: model.safetensors is {in_file:,} bytes on disk but the model stores "
                f"{result['stored_bytes']:,}: the export does not match its plan"
            )
    return {**result, "model": name, "format": meta.get("format"), "data": corpus}
