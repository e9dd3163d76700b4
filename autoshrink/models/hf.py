"""Local Hugging Face causal LMs: a folder saved by `save_pretrained` (config.json, weights and the
tokenizer's files) loaded through transformers' Auto classes, never downloaded.

`HFCausalLM` adapts the loaded model to the interface of autoshrink's training, trials and
evaluation: forward(ids (T, B), state) -> (logits (T, B, V), None). A transformer carries no
state between BPTT windows: each window is one causal sequence (windows longer than the model's
positions are cut into chunks). The adapter's children *are* the Hugging Face model's top-level
children (GPT-2: `transformer`, `lm_head`; Llama: `model`, `lm_head`), so site names and weight
names are the Hugging Face ones (`transformer.h.0.attn.c_attn`, `model.layers.0.self_attn.q_proj`)
and a compressed module put in a site's place runs inside the Hugging Face forward.

Sites (`transformer_sites`): the token embedding (embedding), the LM head (softmax; one site
with the embedding when their weights are tied, counted and compressed once), and every Linear or
GPT-2 Conv1D (whose weight is stored in x out), with role attention or mlp by its module path, or
linear otherwise. Position tables (GPT-2's wpe) are not sites: they stay dense.

Weights are loaded in fp32 (the training loop's dtype; the stored bytes of dense parameters
follow it). transformers is imported only when a Hugging Face folder is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch
from torch import nn

from autoshrink.data.subword import TOKENIZER_FILES, SubwordVocab, tokenizer_fingerprint
from autoshrink.errors import UserError
from autoshrink.models.discover import module_sites
from autoshrink.sites import Site

FORMAT = "hf-causal-lm"  # model.meta["format"] of a dense Hugging Face model
CONFIG = "config.json"

_ATTENTION = ("attn", "attention")
_MLP = ("mlp", "ffn", "feed_forward", "moe", "expert")
_MLP_LAST = ("c_fc", "fc1", "fc2", "w1", "w2", "w3")


def is_hf_folder(path: Path) -> bool:
    """A folder with a Hugging Face config.json (an autoshrink folder has model.json instead)."""
    from autoshrink.models.checkpoint import META

    return path.is_dir() and (path / CONFIG).is_file() and not (path / META).is_file()


def transformer_role(name: str) -> str:
    """attention, mlp or linear, from a matrix's module path (GPT-2, Llama/Mistral, OPT, NeoX, ...)."""
    parts = name.lower().split(".")
    if any(key in part for part in parts[:-1] for key in _ATTENTION):
        return "attention"
    if any(key in part for part in parts[:-1] for key in _MLP) or parts[-1] in _MLP_LAST:
        return "mlp"
    return "linear"


class HFCausalLM(nn.Module):
    """forward(ids (T, B), state) -> (logits (T, B, V), None) around a Hugging Face causal LM."""

    def __init__(self, hf: nn.Module, vocab: SubwordVocab, source: str = ""):
        super().__init__()
        self.__dict__["hf"] = hf  # not a child: its children are ours (below), named as Hugging Face names them
        self.base_vocab = vocab  # the tokenizer, without corpus counts (shared, not copied, by deepcopy)
        if hf._parameters or hf._buffers:
            raise UserError(f"{source or type(hf).__name__}: tensors outside the model's submodules are not supported")
        for name, child in hf.named_children():
            self.add_module(name, child)
        config = hf.config
        self.vocab_size = vocab.size
        positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
        self.max_positions = int(positions) if positions else None
        self.source = source
        # fp32 bytes of the dense architecture (the ratio's numerator), kept through compression
        self.base_dense_bytes = 4 * sum(p.numel() for p in {id(p): p for p in hf.parameters()}.values())

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        hf = self.__dict__.get("hf")
        if hf is not None and isinstance(value, nn.Module) and name in hf._modules:
            setattr(hf, name, value)  # a compressed LM head replaces the Hugging Face model's too

    def train(self, mode: bool = True) -> "HFCausalLM":
        super().train(mode)
        self.hf.training = mode
        return self

    @property
    def config(self):
        return self.hf.config

    def forward(self, ids: torch.Tensor, state=None):
        step = self.max_positions or ids.size(0)
        chunks = [self.hf(input_ids=part.t(), use_cache=False).logits for part in ids.split(step, dim=0)]
        return torch.cat(chunks, dim=1).transpose(0, 1), None

    def autoshrink_sites(self) -> list[Site]:
        return transformer_sites(self)

    def save_base(self, folder: Path) -> None:
        """The model's config and tokenizer (no weights): what `hf_skeleton` rebuilds the model from."""
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.config.save_pretrained(folder)
        self.base_vocab.tokenizer.save_pretrained(folder)


def transformer_sites(model: HFCausalLM) -> list[Site]:
    """Token embedding, LM head (tied: one site) and every projection, with transformer roles."""
    out = []
    for site in module_sites(model, vocab_size=model.vocab_size):
        if site.role == "embedding" and site.shape[0] != model.vocab_size:
            continue  # a position table, not a word table
        if site.role == "linear":
            site = dataclasses.replace(site, role=transformer_role(site.name))
        out.append(site)
    return out


@contextlib.contextmanager
def _quiet_transformers():
    """No progress bars or config warnings on stderr while loading; errors still raise."""
    from transformers.utils import logging

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _config(folder: Path):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder}: {CONFIG} is not a loadable Hugging Face config ({_first_line(e)})") from None
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"{folder}: {type(config).__name__} is an encoder-decoder model, not a causal language model")
    return config


def _vocab(folder: Path, hf: nn.Module) -> SubwordVocab:
    """The folder's tokenizer as the vocabulary of the model's embedding rows."""
    size = int(hf.get_input_embeddings().num_embeddings)
    return SubwordVocab(_tokenizer(folder, size), size, tokenizer_fingerprint(folder))


def _tokenizer(folder: Path, vocab_size: int):
    from transformers import AutoTokenizer

    _check_tokenizer_files(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder}: the tokenizer cannot be loaded ({_first_line(e)})") from None
    if len(tokenizer) > vocab_size:
        raise UserError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model only {vocab_size} embeddings"
        )
    return tokenizer


def _check_tokenizer_files(folder: Path) -> None:
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"{folder} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...): "
            "save it there too (tokenizer.save_pretrained(folder))"
        )


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _causal_class(folder: Path, config):
    from transformers import AutoModelForCausalLM

    if type(config) not in AutoModelForCausalLM._model_mapping:
        raise UserError(
            f"{folder}: {type(config).__name__} ({config.model_type}) is not a causal language model "
            "(AutoModelForCausalLM has no class for it)"
        )
    return AutoModelForCausalLM


def load_hf(folder: Path) -> tuple[HFCausalLM, SubwordVocab, dict]:
    """(adapter, vocabulary without counts, meta) of a local Hugging Face causal LM folder."""
    folder = Path(folder)
    with _quiet_transformers():
        config = _config(folder)
        auto = _causal_class(folder, config)
        _check_tokenizer_files(folder)  # before the weights: a big model loads for a while
        try:
            hf, info = auto.from_pretrained(
                folder, config=config, local_files_only=True, dtype=torch.float32, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError) as e:
            raise UserError(f"{folder}: the model weights cannot be loaded ({_first_line(e)})") from None
        if info.get("missing_keys") or info.get("mismatched_keys"):
            missing = sorted(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
            raise UserError(
                f"{folder}: the weights do not match config.json (missing or mismatched: {', '.join(missing[:3])})"
            )
        vocab = _vocab(folder, hf)
    model = HFCausalLM(hf, vocab, str(folder))
    meta = {
        "format": FORMAT,
        "source": str(folder.resolve()),
        "model_type": config.model_type,
        "architecture": type(hf).__name__,
    }
    return model, vocab, meta


def hf_skeleton(folder: Path) -> tuple[HFCausalLM, SubwordVocab]:
    """The model of a saved config and tokenizer (`HFCausalLM.save_base`), freshly initialised:
    a compressed export fills in its weights."""
    folder = Path(folder)
    with _quiet_transformers():
        config = _config(folder)
        hf = _causal_class(folder, config).from_config(config, dtype=torch.float32)
        vocab = _vocab(folder, hf)
    return HFCausalLM(hf, vocab, str(folder)), vocab
