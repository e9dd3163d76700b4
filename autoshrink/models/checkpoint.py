"""Dense checkpoints of the built-in LMs: model.safetensors + model.json (config, vocabulary, provenance).

Weights are read with safetensors only: nothing from a user file is ever unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autoshrink.data.vocab import Vocab
from autoshrink.errors import UserError, read_user_json
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig

WEIGHTS = "model.safetensors"
META = "model.json"
FORMAT = "autoshrink-lstm-lm/1"


def save_dense(folder: Path, model: LSTMLM, vocab: Vocab, info: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    meta = {"format": FORMAT, "config": model.config.to_dict(), "vocab": vocab.to_json(), **info}
    (folder / META).write_text(json.dumps(meta, indent=1))
    tmp.replace(folder / WEIGHTS)  # the weights land last: a folder with them is complete
    return folder


def is_dense_checkpoint(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file() and (folder / META).is_file()


def read_meta(folder: Path) -> dict:
    if not (folder / META).is_file():
        raise UserError(f"{folder} has no {META}: not an autoshrink model folder")
    meta = read_user_json(folder / META, "model description")
    if not isinstance(meta, dict):
        raise UserError(f"model description {folder / META} is corrupt (not a JSON object)")
    return meta


def load_dense(folder: Path) -> tuple[LSTMLM, Vocab, dict]:
    meta = read_meta(folder)
    if meta.get("format") != FORMAT:
        raise UserError(f"{folder / META}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    model = LSTMLM(LSTMLMConfig(**meta["config"]))
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, FileNotFoundError, OSError) as e:
        raise UserError(f"cannot read {folder / WEIGHTS}: {e}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{folder / WEIGHTS} does not match its config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model, Vocab.from_json(meta["vocab"]), meta
