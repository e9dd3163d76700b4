"""Your own LM as autoshrink reads it: the forward conventions of any torch language model.

autoshrink trains, validates and times a model as `forward(ids (T, B), state) -> (scores (T, B, V),
state)`. Real LMs differ: they return logits or log-probabilities, as (T, B, V), (B, T, V) or
flattened to (T*B, V) rows; they take (B, T) ids (`batch_first`); some need a hidden state
argument (and have `init_hidden(batch)`), some take none. `adapt(model)` wraps the model once:

    lm = adapt(MyLM(...))                          # conventions found by a probe (below)
    lm = adapt(MyLM(...), batch_first=True, output="btv", state=False)   # or declared

`TorchLM` is that wrapper. Its parameters, buffers and children *are* the model's (the same
dictionaries), so site names and weight names are the model's own (`rnn.weight_ih_l0`,
`decoder`), and a compressed module put in a site's place runs inside the model's own forward.
`lm.module` is the model itself.

The probe runs the model on a few (6, 4) id batches, in both layouts, and changes one token: in
the right layout only that sequence's scores change, from that position on. What cannot be read
as next-token scores is one UserError line: a forward that fails, an output that is not a tensor
(or a tuple/object whose first item / `.logits` is), scores whose last dimension is not the
vocabulary, probabilities, non-finite values, or scores that change before the changed token (a
model that sees the future: a bidirectional RNN, attention without a causal mask).
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from autoshrink.errors import UserError

FORMAT = "torch-module"  # model.meta["format"] of a user's dense model
OUTPUTS = ("tbv", "btv", "flat_tb", "flat_bt")  # (T,B,V), (B,T,V), rows t*B+b, rows b*T+t
SCORES = ("logits", "log_probs")
# A forward's second argument with one of these names (or without a default) carries state.
STATE_NAMES = ("hidden", "hx", "h", "hc", "h0", "state", "states", "hidden_state", "memory", "mems")
_PROBE_T, _PROBE_B, _CHANGED = 6, 4, (1, 2)  # T != B, so a shape tells the layouts apart
_SEES_FUTURE = "the model sees the future"


@dataclass(frozen=True)
class Conventions:
    """How a model's forward is called and read (every field can be declared to `adapt`)."""

    batch_first: bool = False  # ids go in as (B, T)
    output: str = "tbv"  # tbv (T, B, V) | btv (B, T, V) | flat_tb (rows t*B+b) | flat_bt (rows b*T+t)
    scores: str = "logits"  # or log_probs: both are read the same way (cross-entropy normalises)
    state: bool = False  # forward(ids, state) -> (scores, state): state carried between windows

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise UserError(f"output={self.output!r}: use one of {', '.join(OUTPUTS)}")
        if self.scores not in SCORES:
            raise UserError(
                f"scores={self.scores!r}: use logits or log_probs (return log-probabilities, not probabilities)"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Conventions":
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - names:
            raise UserError(f"model conventions must be a mapping of {', '.join(sorted(names))}, got {d!r}")
        return cls(**d)


class TorchLM(nn.Module):
    """forward(ids (T, B), state) -> (scores (T, B, V), state) around a user's torch LM (module doc)."""

    def __init__(self, module: nn.Module, conventions: Conventions, vocab_size: int):
        super().__init__()
        self.__dict__["module"] = module  # not a child: its children are ours (the same dicts)
        for attr in ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules"):
            self.__dict__[attr] = module.__dict__[attr]
        self.conventions = conventions
        self.vocab_size = vocab_size
        # fp32 bytes of the dense model (the ratio's numerator), kept through compression
        self.base_dense_bytes = 4 * sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
        self.meta = {"format": FORMAT, "class": class_name(module), "conventions": conventions.to_dict()}

    def train(self, mode: bool = True) -> "TorchLM":
        super().train(mode)
        self.module.training = mode
        return self

    def forward(self, ids: torch.Tensor, state=None):
        c = self.conventions
        steps, batch = ids.shape
        x = ids.t() if c.batch_first else ids
        # With autograd, each compressed weight is built once per forward however often the model
        # reads it (nn.LSTM reads its weights twice); in inference the built weight is kept anyway.
        with parametrize.cached() if torch.is_grad_enabled() else nullcontext():
            if c.state:
                out = self.module(x, state if state is not None else initial_state(self.module, batch))
            else:
                out = self.module(x)
        scores, new_state = _split(out)
        return _time_first(scores, c.output, steps, batch), new_state if c.state else None

    def extra_repr(self) -> str:
        return f"{class_name(self.module)}, {self.conventions}"


def initial_state(module: nn.Module, batch: int):
    """The state a window starts from: `init_hidden(batch)` when the model has one, else None."""
    init = getattr(module, "init_hidden", None)
    return init(batch) if callable(init) else None


def class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _split(out) -> tuple[Any, Any]:
    """(scores, state) of a forward's result: a tensor, a tuple/list (scores first), or an object
    with `.logits` (Hugging Face style)."""
    if isinstance(out, (tuple, list)) and out:
        return out[0], out[1] if len(out) > 1 else None
    if not isinstance(out, torch.Tensor) and isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits, None
    return out, None


def _time_first(scores: torch.Tensor, output: str, steps: int, batch: int) -> torch.Tensor:
    if output == "tbv":
        return scores
    if output == "btv":
        return scores.transpose(0, 1)
    if output == "flat_tb":
        return scores.reshape(steps, batch, -1)
    return scores.reshape(batch, steps, -1).transpose(0, 1)


def _layouts(shape: tuple[int, ...], steps: int, batch: int) -> list[str]:
    """The output layouts a scores tensor of `shape` may have."""
    if len(shape) == 3 and shape[:2] == (steps, batch):
        return ["tbv"]
    if len(shape) == 3 and shape[:2] == (batch, steps):
        return ["btv"]
    if len(shape) == 2 and shape[0] == steps * batch:
        return ["flat_tb", "flat_bt"]
    return []


def _wants_state(module: nn.Module) -> bool:
    """A model carries state when it has init_hidden, or its forward's second argument is
    required or named like a hidden state."""
    if callable(getattr(module, "init_hidden", None)):
        return True
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2:
        return False
    second = positional[1]
    return second.default is inspect.Parameter.empty or second.name.lower() in STATE_NAMES


def _flags(module: nn.Module) -> bool:
    """The layout the model's recurrent and attention modules declare (a guess; the probe decides)."""
    flags = {bool(m.batch_first) for m in module.modules() if isinstance(m, (nn.RNNBase, nn.MultiheadAttention))}
    return flags == {True}


def _vocab_size(module: nn.Module, declared: int | None) -> int:
    if declared is not None:
        return declared
    rows = [m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)]
    if not rows:
        raise UserError(
            f"{class_name(module)} has no nn.Embedding, so its vocabulary size is unknown: pass vocab_size= to adapt()"
        )
    return max(rows)


@torch.no_grad()
def _probe(module: nn.Module, batch_first: bool, state: bool, vocab_size: int) -> tuple[str | None, str, Any]:
    """Run the model in one input layout: (matching output layout or None, why not, scores)."""
    g = torch.Generator().manual_seed(0)
    device = next(iter(module.parameters()), torch.empty(0)).device
    ids = torch.randint(vocab_size, (_PROBE_T, _PROBE_B), generator=g)
    changed = ids.clone()
    t0, b0 = _CHANGED
    changed[t0, b0] = (ids[t0, b0] + 1) % vocab_size
    outs = []
    for x in (ids, changed):
        x = (x.t() if batch_first else x).to(device)
        args = (x, initial_state(module, _PROBE_B)) if state else (x,)
        try:
            out = module(*args)
        except Exception as e:  # the user's code: any failure is one line, not a traceback
            first = (str(e).strip().splitlines() or [""])[0]
            return None, f"forward failed ({type(e).__name__}: {first})", None
        scores, _ = _split(out)
        if not isinstance(scores, torch.Tensor):
            return None, f"forward returned {type(scores).__name__}, not a tensor of scores", None
        outs.append(scores.float().cpu())
    shape = tuple(outs[0].shape)
    layouts = _layouts(shape, _PROBE_T, _PROBE_B)
    if not layouts or shape[-1] != vocab_size:
        return (
            None,
            (
                f"scores of shape {shape} for ids of shape {tuple(x.shape)}; expected (T, B, {vocab_size}), "
                f"(B, T, {vocab_size}) or (T*B, {vocab_size})"
            ),
            None,
        )
    why = "no layout fits"
    for layout in layouts:
        a, b = (_time_first(o, layout, _PROBE_T, _PROBE_B) for o in outs)
        diff = (a - b).abs().amax(-1) > 1e-5 * (1 + a.abs().amax())
        if not diff[t0, b0] or diff[:, [j for j in range(_PROBE_B) if j != b0]].any():
            why = "changing one token changed other sequences' scores (or not its own)"
            continue
        if diff[:t0, b0].any():
            return (
                None,
                (
                    f"{_SEES_FUTURE} (a bidirectional RNN, or attention without a causal mask): scores before "
                    "a changed token changed too"
                ),
                None,
            )
        return layout, "", a
    return None, why, None


def _scores_kind(scores: torch.Tensor, name: str) -> str:
    if not torch.isfinite(scores).all():
        raise UserError(f"{name}: the scores of a probe forward are not finite")
    lse = torch.logsumexp(scores, -1)
    if scores.min() >= 0 and (scores.sum(-1) - 1).abs().max() < 1e-4:
        raise UserError(
            f"{name}: its outputs are probabilities (rows sum to 1): return logits or log-probabilities (log_softmax)"
        )
    return "log_probs" if lse.abs().max() < 1e-4 else "logits"


def detect(
    module: nn.Module,
    vocab_size: int,
    batch_first: bool | None = None,
    output: str | None = None,
    scores: str | None = None,
    state: bool | None = None,
) -> Conventions:
    """The conventions of `module`; what is declared is kept, the rest found by the probe."""
    name = class_name(module)
    state = _wants_state(module) if state is None else state
    if batch_first is not None and output is not None and scores is not None:
        return Conventions(batch_first=batch_first, output=output, scores=scores, state=state)
    guess = _flags(module) if batch_first is None else batch_first
    candidates = [guess] if batch_first is not None else [guess, not guess]
    was_training = module.training
    module.eval()
    try:
        tried = [(bf, *_probe(module, bf, state, vocab_size)) for bf in candidates]
    finally:
        module.train(was_training)
    found = [(bf, layout, s) for bf, layout, _, s in tried if layout is not None and (output in (None, layout))]
    if not found:
        why = next((w for _, _, w, _ in tried if w.startswith(_SEES_FUTURE)), tried[0][2])
        hint = (
            ""
            if why.startswith(_SEES_FUTURE)
            else (
                "; declare how to call it: adapt(model, batch_first=..., "
                "output=..., state=...) (README: Your own model)"
            )
        )
        raise UserError(f"{name}: its outputs cannot be read as next-token scores: {why}{hint}")
    bf, layout, probe_scores = found[0]  # both layouts fit only a model that looks at one token: then the guess
    return Conventions(batch_first=bf, output=layout, scores=scores or _scores_kind(probe_scores, name), state=state)


def adapt(
    model: nn.Module,
    vocab=None,
    *,
    batch_first: bool | None = None,
    output: str | None = None,
    scores: str | None = None,
    state: bool | None = None,
    vocab_size: int | None = None,
) -> nn.Module:
    """`model` as autoshrink trains and measures it (module doc). autoshrink's own models (and a
    model adapted before) come back as they are. `vocab` (the corpus's word vocabulary) is kept
    as `lm.vocab` of a wrapped model; a vocabulary larger than the model's scores is refused."""
    if isinstance(model, TorchLM) or _native(model):
        lm = model
    else:
        size = _vocab_size(model, vocab_size)
        conventions = detect(model, size, batch_first=batch_first, output=output, scores=scores, state=state)
        lm = TorchLM(model, conventions, size)
    if vocab is not None and isinstance(lm, TorchLM):
        if len(vocab) > lm.vocab_size:
            raise UserError(
                f"the corpus vocabulary has {len(vocab):,} words but {class_name(lm.module)} scores "
                f"{lm.vocab_size:,}: build the model with len(vocab) words"
            )
        lm.vocab = vocab
    return lm


def _native(model: nn.Module) -> bool:
    """autoshrink's own models already follow its conventions."""
    from autoshrink.models.hf import HFCausalLM
    from autoshrink.models.lstm_lm import LSTMLM

    return isinstance(model, (LSTMLM, HFCausalLM))


def describe(lm: TorchLM) -> dict:
    """What model.json records of a compressed user model: its class, conventions and vocabulary."""
    vocab = getattr(lm, "vocab", None)
    return {
        "architecture": "torch",
        "class": lm.meta["class"],
        "conventions": lm.conventions.to_dict(),
        "vocab_size": lm.vocab_size,
        "vocab": vocab.to_json() if hasattr(vocab, "to_json") else None,
    }


def rebuild(meta: dict, model: nn.Module | Callable[[], nn.Module] | None, where: str) -> TorchLM:
    """The adapted dense model a compressed export of a user model is loaded into: `model` is a
    fresh instance of the user's class (or a function that makes one)."""
    if model is None:
        raise UserError(
            f"{where} holds a compressed {meta.get('class', 'torch model')}: pass your model to load it, "
            f"autoshrink.load({where!r}, model=YourLM(...)) with the constructor arguments of the original"
        )
    if not isinstance(model, nn.Module):
        model = model() if callable(model) else model
        if not isinstance(model, nn.Module):
            raise UserError(f"model= must be a torch module or a function that returns one, got {type(model).__name__}")
    conventions = Conventions.from_dict(meta.get("conventions", {}))
    return TorchLM(model, conventions, int(meta.get("vocab_size") or _vocab_size(model, None)))
