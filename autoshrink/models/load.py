"""`load(name_or_path)`: a ready model from a preset name, a model folder, or a Hugging Face folder.

A model folder is told apart by the "format" of its model.json. Formats written by later layers
(the compressed export of final/export.py) register their loader here with `register_format`,
so this module never imports them: data flows one way (docs/design.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from torch import nn

from autoshrink.errors import UserError
from autoshrink.models import pretrain
from autoshrink.models.checkpoint import META, load_dense
from autoshrink.models.hf import is_hf_folder, load_hf
from autoshrink.models.presets import PRESETS

Loader = Callable[[Path], tuple[nn.Module, Any, dict]]  # folder -> (model, vocabulary, model.json)
_LOADERS: dict[str, Loader] = {}
_TAKES_MODEL: set[str] = set()  # formats whose loader takes the user's model (`model=`)


def register_format(name: str, loader: Loader, takes_model: bool = False) -> None:
    """Let `load` open folders whose model.json says `"format": name`; `takes_model`: the loader
    also takes `model=` (the user's own model to load into)."""
    if name in _LOADERS and _LOADERS[name] is not loader:
        raise ValueError(f"model format {name!r} is registered twice")
    _LOADERS[name] = loader
    if takes_model:
        _TAKES_MODEL.add(name)


def folder_format(path: Path) -> str | None:
    """The "format" of a folder's model.json, or None when it has none that can be read."""
    try:
        return json.loads((path / META).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return None


def load(
    name_or_path: str,
    data: str = "kjv",
    seed: int = 0,
    device: str = "auto",
    on_log: Callable[[dict], None] | None = None,
    model: Any = None,
) -> nn.Module:
    """A ready model: a preset name (pretrained on `data`, cached), a saved autoshrink model
    folder (a dense checkpoint or a compressed export, by the "format" of its model.json), or a
    local Hugging Face causal LM folder (config.json, weights and tokenizer, as
    `save_pretrained` writes them; never downloaded).

    The model carries its vocabulary as `model.vocab` (word frequencies for vocabulary methods;
    for a Hugging Face model its tokenizer) and its model.json as `model.meta`.

    `model`: for the export of your own torch model, a fresh instance of its class (or a function
    that makes one); it is compressed in place and returned wrapped (models/adapter.py; `.module`).
    """
    path = Path(name_or_path).expanduser()
    if model is not None and (name_or_path in PRESETS or path.exists() and folder_format(path) not in _TAKES_MODEL):
        raise UserError(f"{name_or_path} is not the export of your own torch model: load it without model=")
    if name_or_path in PRESETS:
        model, vocab, meta = pretrain.pretrained(name_or_path, data, seed=seed, device=device, on_log=on_log)
    else:
        if not path.exists():
            raise UserError(f"no model {name_or_path!r}: use a preset ({', '.join(PRESETS)}) or a model folder")
        if is_hf_folder(path):
            model, vocab, meta = load_hf(path)
        elif (path / META).is_file():
            loader = _LOADERS.get(folder_format(path), load_dense)  # load_dense names a format it does not know
            model, vocab, meta = loader(path, model=model) if model is not None else loader(path)
        else:
            raise UserError(
                f"{path} is neither an autoshrink model folder (model.json) nor a Hugging Face model "
                f"folder (config.json)"
            )
    model.vocab = vocab
    model.meta = meta
    return model.eval()
