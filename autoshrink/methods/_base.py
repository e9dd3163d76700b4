"""What every compression method is made of, and the registry that finds them.

A method is one file `methods/<name>.py` with:
  - a frozen config dataclass (subclass of MethodConfig) that checks its knobs in __post_init__;
  - a CompressedWeight subclass registered with `@register(ThatConfig)`, which holds the
    trainable representation of one weight matrix W (m x n, y = W x; rows = words for vocabulary
    sites) and implements `build(weight, site, config, stats)` (initialise from the dense W and,
    when `config.init == "data"`, from the site's calibration statistics: docs/methods.md, data-aware initialisation),
    `weight` (W as stored, with quantisation applied), `export_specs(site, config, freqs)` (names,
    dtypes and shapes of what it stores, known without building: they give `stored_bytes` and the
    file's header), `export`/`from_export` (packed tensors).
The modules that put a CompressedWeight in a site's place are in _standins.py.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn
import torch.nn.functional as F

from autoshrink.errors import UserError
from autoshrink.methods._storage import (
    Specs,
    check_bits,
    fake_quant,
    float_specs,
    prefixed,
    pack_float,
    specs_bytes,
    unpack_float,
)
from autoshrink.sites import ROLES, Site, SiteStats

ALL_ROLES = ROLES
INITS = ("data", "plain")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def calibrated(config: "MethodConfig", stats: SiteStats | None) -> SiteStats | None:
    """The statistics a data-aware build uses: None under init "plain" (or without any)."""
    return stats if config.data_aware else None


def site_freqs(site: Site, stats: SiteStats | None) -> torch.Tensor | None:
    """Word counts of a vocabulary site from its statistics (any init), else None."""
    return stats.freqs if stats is not None and site.is_vocab else None


@dataclass(frozen=True)
class MethodConfig:
    """Knobs shared by every method: how its float tensors are stored."""

    method: ClassVar[str] = ""
    roles: ClassVar[tuple[str, ...]] = ALL_ROLES  # site roles the method applies to
    # The knob whose growth grows the stored bytes monotonically (rank, density, pool size,
    # bits): budget repair and the per-ratio baselines search along it. None: fixed size.
    size_knob: ClassVar[str | None] = None
    # A method whose compressed form is only judged fairly after training (its doping anneal,
    # hashing or word re-matching run during it; docs/methods.md pitfall 12): a search's profile,
    # which measures options untrained, leaves it to the trials.
    judged_after_training: ClassVar[bool] = False
    # Knobs added after plans were first written: to_dict leaves them out at their default, so a
    # plan from before is the same plan (twins, profile rows, studies) and older code reads new plans.
    written_when_set: ClassVar[tuple[str, ...]] = ()
    bits: int = field(
        default=32,
        metadata={
            "help": "storage bits of the method's float tensors: 32, 16 or 2-8 (affine codes, straight-through fine-tuning)"
        },
    )
    group_size: int = field(
        default=0,
        metadata={
            "help": "consecutive values of a row that share one quantisation scale and minimum (4 bytes); 0 = one per row"
        },
    )
    init: str = field(
        default="data",
        metadata={
            "help": "initialisation: 'data' fits the site's calibrated inputs and word frequencies (whitened SVD, GPTQ "
            "rounding, activation-aware pruning); 'plain' ignores them"
        },
    )

    def __post_init__(self) -> None:
        check_bits(self.bits)
        self.check_int("group_size", 0)
        if self.init not in INITS:
            raise UserError(f"{self.method}: init must be one of {', '.join(INITS)}, got {self.init!r}")

    def check_int(self, name: str, low: int, high: int | None = None) -> None:
        """Refuse knob `name` unless it is an integer in [low, high] (one line showing the value)."""
        value = getattr(self, name)
        if not is_int(value) or value < low or (high is not None and value > high):
            where = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise UserError(f"{self.method}: {name} must be an integer {where}, got {value!r}")

    def check_range(self, name: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
        """Refuse knob `name` unless it is a number in the range (open ends where asked)."""
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise UserError(f"{self.method}: {name} must be in {span}, got {value!r}")

    @property
    def data_aware(self) -> bool:
        return self.init == "data"

    def to_dict(self) -> dict[str, Any]:
        knobs = dataclasses.asdict(self)
        for name in type(self).written_when_set:
            if knobs[name] == self.__dataclass_fields__[name].default:
                del knobs[name]
        return {"method": self.method, **knobs}

    def replace(self, **changes: Any) -> "MethodConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def knobs(cls) -> list[tuple[str, Any, str]]:
        """(name, default, help) of every knob, for `autoshrink methods`."""
        return [(f.name, f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)]

    def check_site(self, site: Site) -> None:
        """Refuse sites the method cannot compress; methods add shape checks."""
        if site.role not in self.roles:
            raise UserError(
                f"{self.method} does not apply to {site.role} site {site.name!r} (it applies to {', '.join(self.roles)})"
            )

    def check_shrinks(self, site: Site, freqs: torch.Tensor | None = None) -> None:
        """Refuse a config that stores more than the site's dense weight (fp32, bias excluded)."""
        self.check_site(site)
        nbytes = _BY_NAME[self.method].stored_bytes(site, self, freqs if site.is_vocab else None)
        dense = 4 * site.shape[0] * site.shape[1]
        if nbytes > dense:
            knobs = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "method")
            raise UserError(
                f"{self.method} ({knobs}) stores {nbytes:,} bytes on site {site.name!r}, more than its "
                f"dense {dense:,}: choose a smaller {type(self).size_knob or 'setting'}"
            )


class CompressedWeight(nn.Module, abc.ABC):
    """The compressed form of one weight matrix W (m x n). A method implements the abstract
    methods; a class that misses one cannot be instantiated."""

    def __init__(self, site: Site, config: MethodConfig):
        super().__init__()
        self.site = site
        self.config = config

    # --- what a method implements -------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def build(
        cls, weight: torch.Tensor, site: Site, config: MethodConfig, stats: SiteStats | None = None
    ) -> "CompressedWeight":
        """A trainable module initialised from the dense weight (m x n, rows = words) and, when
        config.init is "data", the site's calibration statistics (None: plain initialisation).
        `stats.freqs` (word counts) shape vocabulary methods whatever the init."""

    @abc.abstractmethod
    def weight(self) -> torch.Tensor:
        """W as stored (quantisation applied), m x n; used for checks and as a fallback."""

    @classmethod
    @abc.abstractmethod
    def export_specs(cls, site: Site, config: MethodConfig, freqs: torch.Tensor | None = None) -> Specs:
        """What `export()` writes for this site and config (and word counts, for methods whose
        allocation follows them), computed without building: name -> (dtype, shape). The file's
        bytes, its header included, follow from these alone."""

    @abc.abstractmethod
    def export(self) -> dict[str, torch.Tensor]:
        """The packed tensors that are stored, as export_specs() describes them."""

    @classmethod
    @abc.abstractmethod
    def from_export(cls, tensors: dict[str, torch.Tensor], site: Site, config: MethodConfig) -> "CompressedWeight":
        """The module rebuilt from export() tensors (inverse of export, up to float rounding)."""

    # --- what a method may override ------------------------------------------------------
    @classmethod
    def stored_bytes(cls, site: Site, config: MethodConfig, freqs: torch.Tensor | None = None) -> int:
        """Exact bytes of `export()`'s tensors for this site and config, without building."""
        return specs_bytes(cls.export_specs(site, config, freqs))

    def tensor_specs(self) -> Specs:
        """What export() of this built module writes (export_specs of its site and config; methods
        whose allocation depends on data, like GroupReduce, answer from what they built)."""
        return type(self).export_specs(self.site, self.config)

    def nbytes(self) -> int:
        """Stored bytes of this built module (equals stored_bytes of its site and config)."""
        return specs_bytes(self.tensor_specs())

    @classmethod
    def keeps_site_bias(cls, site: Site) -> bool:
        """Whether the site's own bias stays a plain parameter beside this method's tensors."""
        return cls.uses_site_bias

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T over the last dimension; override with a cheaper product where one exists."""
        return F.linear(x, self.weight())

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows of W for word ids (embedding sites)."""
        return F.embedding(ids, self.weight())

    def sequence_weight(self) -> torch.Tensor:
        """W built once for a whole sequence, as a recurrent layer uses it: T time steps then run
        in torch's fused LSTM kernel instead of T small products in a Python loop (on a CPU that
        is faster than any per-step factored product; gradients reach the factors through it).
        In inference the built W is kept until a tensor of the module changes (version counters),
        so a forward pass does not rebuild it."""
        if self.training or torch.is_grad_enabled():
            return self.build_sequence_weight()
        tensors = list(self.parameters()) + list(self.buffers())
        key = tuple((id(t), t._version) for t in tensors)
        cached = self.__dict__.get("_sequence_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.build_sequence_weight().detach())
            self.__dict__["_sequence_cache"] = cached
        return cached[1]

    def build_sequence_weight(self) -> torch.Tensor:
        """What sequence_weight() builds; training-time regularisers of the matmul path (Kronecker's
        CMR) apply here too."""
        return self.weight()

    def on_progress(self, fraction: float) -> None:
        """Told how far fine-tuning has gone (0..1): pruning ramps, doping anneals, CMR."""

    def on_validation(
        self, fraction: float, replay: "Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]"
    ) -> str | None:
        """Told at each validation of a final training, `fraction` (0..1) of the way through.
        `replay()` runs the model over a prefix of the training text and yields, per window, the
        rows that enter this site (N x in) and the next words (N): a method may refit itself
        from them (LightRNN re-matches words to cells). Returns a line for the log, or None."""
        return None

    # Methods that model the output distribution themselves (LightRNN) carry their own bias.
    uses_site_bias: ClassVar[bool] = True
    # Fraction of fine-tuning after which the module is at its stored form (a pruning ramp
    # ends there); validations before it do not measure the compressed model.
    settles_at: ClassVar[float] = 0.0

    # --- helpers for methods -------------------------------------------------------------
    def q(self, t: torch.Tensor, group_size: int | None = None, transposed: bool = False) -> torch.Tensor:
        """A float tensor as stored under this config's bits (straight-through): in rows of
        `group_size` (the config's by default), or, `transposed`, stored as t^T (its columns are
        the quantisation rows).

        Without autograd (inference) the result is cached until the tensor changes (its
        version counter moves with every in-place update), so a quantised model runs at the
        speed of its float twin instead of re-quantising on every forward."""
        if self.config.bits >= 32:
            return t
        group = self.config.group_size if group_size is None else group_size

        def stored() -> torch.Tensor:
            return fake_quant(t.T, self.config.bits, group).T if transposed else fake_quant(t, self.config.bits, group)

        if torch.is_grad_enabled() or not isinstance(t, nn.Parameter):
            # Only parameters are cached: a temporary's id may be reused by the next temporary.
            return stored()
        cache = self.__dict__.setdefault("_q_cache", {})
        key = (id(t), t._version, t.device, group, transposed)
        hit = cache.get(id(t))
        if hit is None or hit[0] != key:
            hit = (key, stored().detach())
            cache[id(t)] = hit
        return hit[1]

    # A factor U (m x r) is stored in rows, or with `groups` > 0 transposed under "<name>T": U^T's
    # rows are U's columns, a scale per `groups` rows of each (lowrank's and groupreduce's u_groups).
    def q_factor(self, u: torch.Tensor, groups: int) -> torch.Tensor:
        return self.q(u, groups, transposed=True) if groups else self.q(u)

    def pack_factor(self, name: str, u: torch.Tensor, groups: int) -> dict[str, torch.Tensor]:
        return self.pack(f"{name}T", u.T, groups) if groups else self.pack(name, u)

    @classmethod
    def factor_specs(cls, name: str, shape: tuple[int, int], config: MethodConfig, groups: int) -> Specs:
        m, r = shape
        return cls.float_specs(f"{name}T", (r, m), config, groups) if groups else cls.float_specs(name, shape, config)

    @classmethod
    def unpack_factor(
        cls, tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, int], config: MethodConfig, groups: int
    ) -> torch.Tensor:
        m, r = shape
        if groups:
            return cls.unpack(tensors, f"{name}T", (r, m), config, groups).T
        return cls.unpack(tensors, name, shape, config)

    def pack(self, name: str, t: torch.Tensor, group_size: int | None = None) -> dict[str, torch.Tensor]:
        group = self.config.group_size if group_size is None else group_size
        return prefixed(name, pack_float(t, self.config.bits, group))

    @staticmethod
    def float_specs(name: str, shape: tuple[int, ...], config: MethodConfig, group_size: int | None = None) -> Specs:
        """What pack(name, t) writes for a tensor t of `shape` (export_specs' counterpart of pack)."""
        group = config.group_size if group_size is None else group_size
        return prefixed(name, float_specs(shape, config.bits, group))

    @staticmethod
    def unpack(
        tensors: dict[str, torch.Tensor],
        name: str,
        shape: tuple[int, ...],
        config: MethodConfig,
        group_size: int | None = None,
    ) -> torch.Tensor:
        sub = {
            k[len(name) + 1 :] if k != name else "": v
            for k, v in tensors.items()
            if k == name or k.startswith(name + ".")
        }
        return unpack_float(sub, shape, config.bits, config.group_size if group_size is None else group_size)

    def extra_repr(self) -> str:
        return f"site={self.site.name!r}, shape={self.site.shape}, config={self.config}"


# --- registry ---------------------------------------------------------------------------
_BY_NAME: dict[str, type[CompressedWeight]] = {}
_CONFIGS: dict[str, type[MethodConfig]] = {}


def register(config_cls: type[MethodConfig]):
    """Class decorator: `@register(LowRankConfig) class LowRankWeight(CompressedWeight)`."""

    def wrap(weight_cls: type[CompressedWeight]) -> type[CompressedWeight]:
        name = config_cls.method
        if not name:
            raise ValueError(f"{config_cls.__name__} has no method name")
        if name in _BY_NAME:
            raise ValueError(f"method {name!r} is registered twice ({_BY_NAME[name].__name__}, {weight_cls.__name__})")
        _BY_NAME[name] = weight_cls
        _CONFIGS[name] = config_cls
        weight_cls.config_class = config_cls
        return weight_cls

    return wrap


def method_names() -> list[str]:
    return sorted(_BY_NAME)


def config_class(name: str) -> type[MethodConfig]:
    if name not in _CONFIGS:
        raise UserError(f"unknown method {name!r}; available: {', '.join(method_names())}")
    return _CONFIGS[name]


def weight_class(config: MethodConfig) -> type[CompressedWeight]:
    return _BY_NAME[config.method]


def config_from_dict(d: dict[str, Any]) -> MethodConfig:
    """{"method": "lowrank", "rank": 32} -> LowRankConfig(rank=32); unknown knobs are an error."""
    if not isinstance(d, dict) or "method" not in d:
        raise UserError(f"a site plan needs a 'method', got {d!r}")
    cls = config_class(d["method"])
    knobs = {k: v for k, v in d.items() if k != "method"}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(knobs) - names)
    if unknown:
        raise UserError(f"{cls.method}: unknown knob(s) {', '.join(unknown)}; knobs: {', '.join(sorted(names))}")
    try:
        return cls(**knobs)
    except TypeError as e:
        raise UserError(f"{cls.method}: {e}") from None
