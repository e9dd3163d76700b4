"""Export and load of compressed models: the folder `autoshrink train` writes and `autoshrink eval` reads.

    final/
      model.safetensors   exactly the stored bytes of the model (autoshrink.stored_bytes), header
                          included (plan/bytes.py counts it before anything is built):
                          each compressed weight's packed export() tensors under `<site>.<name>`,
                          every other parameter under its own name at its own dtype; a tensor or
                          compressed weight shared by tied sites is stored once
      plan.json           the plan, as users write it
      model.json          format "autoshrink-compressed/1", the base LSTM config and vocabulary
                          (or, for a Hugging Face model, "architecture": "hf"; for a user's
                          own torch model, "architecture": "torch" with its class, forward
                          conventions and vocabulary), the site list, provenance
      metrics.json        what final training measured
      base/               Hugging Face models only: the config and tokenizer files (no weights)

Loading rebuilds the base model (the LSTM from model.json; a Hugging Face model from base/
through AutoModelForCausalLM.from_config; a user's own model from the fresh instance of its class
passed as `load(folder, model=...)`), puts `from_export` modules in the planned sites and
copies the remaining parameters: safetensors only, nothing is unpickled. A missing, corrupt or
mismatched file is one UserError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from autoshrink.data.vocab import Vocab
from autoshrink.errors import UserError
from autoshrink.methods import CompressedWeight, safetensors_file_bytes, weight_class
from autoshrink.models import adapter
from autoshrink.models.checkpoint import META, WEIGHTS, read_meta
from autoshrink.models.hf import FORMAT as HF_FORMAT, hf_skeleton
from autoshrink.models.load import register_format
from autoshrink.models.lstm_lm import LSTMLM, LSTMLMConfig
from autoshrink.models.discover import discover_sites
from autoshrink.sites import Site
from autoshrink.plan import Plan, parse_plan, place_compressed, plan_to_json, resolve, stored_bytes
from autoshrink.plan.bytes import EXPORT_FORMAT, FILE_METADATA, compressed_weights, plain_parameters

FORMAT = EXPORT_FORMAT
PLAN = "plan.json"
METRICS = "metrics.json"
BASE = "base"  # a Hugging Face model's config and tokenizer
HF = "hf"  # model.json "architecture" of a compressed Hugging Face model


def export_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors, as plan.bytes.model_specs describes them."""
    out: dict[str, torch.Tensor] = {}
    for site, weight in compressed_weights(model).items():
        for name, t in weight.export().items():
            out[f"{site}.{name}"] = t.detach().cpu().contiguous().clone()  # clone: safetensors refuses shared storage
    for name, p in plain_parameters(model).items():
        if name in out:
            raise RuntimeError(f"export key {name!r} is both a compressed tensor and a parameter")
        out[name] = p.detach().cpu().contiguous().clone()
    return out


def save_compressed(
    model: nn.Module,
    plan: Plan | Mapping[str, Any],
    folder: str | Path,
    base_meta: dict,
    metrics: dict,
    info: dict | None = None,
    sites: list[Site] | None = None,
) -> Path:
    """Write the export folder. `base_meta` is the dense model's meta (model.json of a checkpoint:
    config, vocab, provenance; or a Hugging Face model's); `sites` those of the dense model (a
    Hugging Face model needs them; the LSTM's follow from its config); `info` adds provenance of
    the final training (run, trial, data)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = export_tensors(model)
    nbytes = stored_bytes(model)
    if safetensors_file_bytes(tensors, FILE_METADATA) != nbytes:  # docs/design.md: never write an export that disagrees
        raise RuntimeError(
            f"export would be {safetensors_file_bytes(tensors, FILE_METADATA)} bytes but the model stores {nbytes}"
        )
    plan_json = plan_to_json(parse_plan(plan))
    hf = base_meta.get("format") == HF_FORMAT
    own = base_meta.get("format") == adapter.FORMAT  # a user's own torch model (models/adapter.py)
    if sites is None:
        if hf or own:
            raise ValueError("save_compressed: a Hugging Face or own torch model's export needs the dense sites")
        sites = LSTMLM(LSTMLMConfig(**base_meta["config"])).autoshrink_sites()
    site_rows = [
        {
            "name": s.name,
            "role": s.role,
            "shape": list(s.shape),
            "bias": s.bias,
            "tied_with": s.tied_with,
            "method": plan_json.get(s.tied_with or s.name, {}).get("method", "dense"),
        }
        for s in sites
    ]
    base = {k: v for k, v in base_meta.items() if k not in ("format", "config", "vocab")}
    described = (
        {"architecture": HF}
        if hf
        else adapter.describe(model)
        if own
        else {"config": base_meta["config"], "vocab": base_meta["vocab"]}
    )
    meta = {"format": FORMAT, **described, "sites": site_rows, "stored_bytes": nbytes, "base": base, **(info or {})}
    if hf:
        model.save_base(folder / BASE)
    tmp = folder / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata=FILE_METADATA)
    if tmp.stat().st_size != nbytes:  # the budget bounds this file: its size is the count, to the byte
        raise RuntimeError(f"{tmp} holds {tmp.stat().st_size} bytes but the model stores {nbytes}")
    (folder / PLAN).write_text(json.dumps(plan_json, indent=1) + "\n")
    (folder / META).write_text(json.dumps(meta, indent=1) + "\n")
    (folder / METRICS).write_text(json.dumps(metrics, indent=1) + "\n")
    tmp.replace(folder / WEIGHTS)  # the weights land last: a folder with them is complete
    return folder


def _read_plan(folder: Path) -> Plan:
    path = folder / PLAN
    if not path.is_file():
        raise UserError(f"{folder} has no {PLAN}: an incomplete compressed export")
    return parse_plan(path)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, FileNotFoundError, OSError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _base_model(folder: Path, meta: dict, model=None) -> tuple[nn.Module, Any]:
    """The uncompressed skeleton (fresh weights) and vocabulary an export was made from; for a
    user's own torch model, `model` is a fresh instance of its class (or a function making one)."""
    if meta.get("architecture") == "torch":
        vocab = meta.get("vocab")
        return adapter.rebuild(meta, model, str(folder)), Vocab.from_json(vocab) if vocab else None
    if model is not None:
        raise UserError(f"{folder} is not the export of your own torch model: load it without model=")
    if meta.get("architecture") == HF:
        if not (folder / BASE).is_dir():
            raise UserError(f"{folder} has no {BASE}/ (the Hugging Face config and tokenizer): an incomplete export")
        return hf_skeleton(folder / BASE)
    try:
        return LSTMLM(LSTMLMConfig(**meta["config"])), Vocab.from_json(meta["vocab"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{folder / META} lacks a valid config or vocabulary: {e!r}") from None


def load_compressed(folder: str | Path, model=None) -> tuple[nn.Module, Any, dict]:
    """(model, vocabulary, model.json) of an export folder written by save_compressed. An export
    of a user's own model needs `model`: a fresh instance of its class (or a function making one),
    which is compressed in place."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta.get("format") != FORMAT:
        raise UserError(f"{folder / META}: format {meta.get('format')!r} is not {FORMAT!r}")
    model, vocab = _base_model(folder, meta, model)
    plan = _read_plan(folder)
    tensors = _read_tensors(folder / WEIGHTS)
    sites = discover_sites(model)
    if meta.get("architecture") == "torch":
        _check_sites(folder, meta, sites)
    by_name, resolved = resolve(model, plan, sites)
    unused = set(tensors)
    built: dict[str, CompressedWeight] = {}
    for owner, cfg in resolved.items():
        site = by_name[owner]
        bias_key = (
            f"{owner}.bias" if site.bias and weight_class(cfg).keeps_site_bias(site) else None
        )  # a plain parameter
        prefix = owner + "."
        sub = {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix) and k != bias_key}
        built[owner] = _from_export(folder / WEIGHTS, sub, site, cfg)
        unused -= {prefix + k for k in sub}
    place_compressed(model, by_name, built)
    for name, p in plain_parameters(model).items():
        t = tensors.get(name)
        if t is None or t.shape != p.shape:
            found = "missing" if t is None else f"shape {tuple(t.shape)}"
            raise UserError(
                f"{folder / WEIGHTS} does not match its plan: parameter {name} of shape {tuple(p.shape)} is {found}"
            )
        with torch.no_grad():
            p.copy_(t.to(p.dtype))
        unused.discard(name)
    if unused:
        raise UserError(f"{folder / WEIGHTS} holds tensors its plan does not use: {', '.join(sorted(unused)[:4])}")
    return model.eval(), vocab, meta


register_format(FORMAT, load_compressed, takes_model=True)


def _check_sites(folder: Path, meta: dict, sites: list[Site]) -> None:
    """The user's model to load into has the sites the export was made from."""
    saved = {row["name"]: tuple(row["shape"]) for row in meta.get("sites", [])}
    found = {s.name: s.shape for s in sites}
    if saved and saved != found:
        differ = sorted(set(saved.items()) ^ set(found.items()))[:3]
        raise UserError(
            f"{folder}: the model to load into does not match the export's sites (differing: "
            f"{', '.join(f'{n} {tuple(s)}' for n, s in differ)}); build it as the compressed one was built"
        )


def _from_export(path: Path, tensors: dict[str, torch.Tensor], site: Site, cfg) -> CompressedWeight:
    try:
        return weight_class(cfg).from_export(tensors, site, cfg)
    except UserError:
        raise
    except (KeyError, RuntimeError, ValueError, IndexError, TypeError) as e:
        raise UserError(
            f"{path}: the tensors of site {site.name!r} do not match its plan ({cfg.method}): {e!r}"
        ) from None


def file_bytes(folder: str | Path) -> int:
    """Size on disk of a folder's model.safetensors, header included: what its stored bytes count."""
    path = Path(folder) / WEIGHTS
    try:
        return path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}") from None
