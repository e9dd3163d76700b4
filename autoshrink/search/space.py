"""Search spaces: YAML files that say, per site role, which methods a site may get and their knobs.

Loading validates everything (unknown role, method or knob, bad range, malformed YAML) into one
UserError line. Sampling gives every site its own Optuna parameters, named
`<site>/method` and `<site>/<method>/<knob>`, so choices are per layer and conditional on the
method (TPE and NSGA-II both handle such conditional spaces).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from autoshrink.errors import UserError, read_user_text
from autoshrink.methods import MethodConfig, config_class
from autoshrink.plan.bytes import method_bytes
from autoshrink.sites import ROLES, Site

DENSE = "dense"  # keep the site uncompressed
SHIPPED = Path(__file__).resolve().parents[2] / "search_spaces"
DEFAULT_SPACE = "search_spaces/default.yaml"
TRANSFORMER_SPACE = "search_spaces/transformer.yaml"


@dataclass(frozen=True)
class Knob:
    """One knob's range: `choices`, or [low, high] (log-scaled if `log`), or one fixed value."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def suggest(self, trial, param: str):
        if self.choices is not None:
            return self.choices[0] if len(self.choices) == 1 else trial.suggest_categorical(param, list(self.choices))
        if self.integer:
            return trial.suggest_int(param, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(param, self.low, self.high, log=self.log)

    @property
    def smallest(self):
        """The value that makes a method smallest: knobs grow bytes with their value."""
        return min(self.choices) if self.choices is not None else self.low

    @property
    def largest(self):
        """The value that makes a method largest (the other end of `smallest`)."""
        return max(self.choices) if self.choices is not None else self.high

    @property
    def searched(self) -> bool:
        """Whether sampling makes this knob an Optuna parameter (one fixed choice is not)."""
        return self.choices is None or len(self.choices) > 1

    def nearest(self, value):
        """The value of this knob's range closest to `value` (log-closest among numeric choices)."""
        if self.choices is not None:
            if value in self.choices:
                return value
            numeric = [c for c in self.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
            if numeric and isinstance(value, (int, float)):
                return min(numeric, key=lambda c: abs(math.log(c / value)) if c > 0 and value > 0 else abs(c - value))
            return self.choices[0]
        clamped = min(max(value, self.low), self.high)
        return int(round(clamped)) if self.integer else float(clamped)

    def below(self, value):
        """The next smaller value of this knob's range (x0.8 on a range, the next lower choice),
        or None when `value` is already the smallest: repair steps down without leaving the space."""
        if self.choices is not None:
            lower = [c for c in self.choices if isinstance(c, (int, float)) and c < value]
            return max(lower) if lower else None
        if value <= self.low:
            return None
        new = min(value - 1, int(value * 0.8)) if self.integer else value * 0.8
        return max(new, self.low)


@dataclass(frozen=True)
class SearchSpace:
    roles: dict[str, dict[str, dict[str, Knob]]]  # role -> method -> knob -> range
    source: str = ""

    def methods_for(self, site: Site) -> list[str]:
        return list(self.roles.get(site.role, {}))

    def within(self, site: Site, config: MethodConfig) -> MethodConfig:
        """`config` with every knob the space ranges for its method on this site moved to the
        range's nearest value (a UserError if that is not a valid config for the site)."""
        knobs = self.roles.get(site.role, {}).get(config.method, {})
        moved = config.replace(**{name: knob.nearest(getattr(config, name)) for name, knob in knobs.items()})
        moved.check_site(site)
        return moved

    def shrink(self, site: Site, config: MethodConfig) -> MethodConfig | None:
        """One step smaller inside the space: the method's size knob down its range, then its
        bits down their choices; None when both are at their smallest (repair then switches the
        site to the space's smallest setting). Knobs the space does not range stay as they are."""
        knobs = self.roles.get(site.role, {}).get(config.method, {})
        size = type(config).size_knob
        for name in [n for n in (size, "bits") if n in knobs]:
            new = knobs[name].below(getattr(config, name))
            if new is None:
                continue
            try:
                smaller = config.replace(**{name: new})
                smaller.check_site(site)
                return smaller
            except UserError:
                continue
        return None

    def params_of(self, plan: dict[str, MethodConfig], sites: list[Site]) -> dict[str, Any]:
        """The Optuna parameters under which `sample_plan` draws `plan` (sites not in it: dense),
        so a plan chosen elsewhere (warm start, allocation, repair) can be enqueued as a trial."""
        params: dict[str, Any] = {}
        for site in sites:
            if site.tied_with is not None:
                continue
            methods = [m for m in self.methods_for(site) if m == DENSE or applies(m, site)]
            cfg = plan.get(site.name)
            if not methods and cfg is None:
                continue  # the space leaves this site alone
            method = cfg.method if cfg is not None else DENSE
            if method not in methods:
                raise UserError(f"site {site.name!r}: {method} is not in the space's choices {methods}")
            if len(methods) > 1:
                params[f"{site.name}/method"] = method
            for name, knob in self.roles[site.role].get(method, {}).items() if cfg is not None else ():
                if knob.searched:
                    params[f"{site.name}/{method}/{name}"] = getattr(cfg, name)
        return params

    def smallest_configs(self, site: Site) -> list[MethodConfig]:
        """Each method's smallest setting for this site (the feasibility check uses them)."""
        out = []
        for method, knobs in self.roles.get(site.role, {}).items():
            if method == DENSE:
                continue
            cfg = config_class(method)(**{k: knob.smallest for k, knob in knobs.items()})
            try:
                cfg.check_site(site)
            except UserError:
                continue
            out.append(cfg)
        return out


def _knob(method: str, name: str, spec: Any, cls) -> Knob:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        raise UserError(f"space: {method} has no knob {name!r} (knobs: {', '.join(fields)})")
    where = f"space: {method}.{name}"
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"{where}: an empty list of choices")
        knob = Knob(name, choices=tuple(spec))
        values = spec
    elif isinstance(spec, dict):
        extra = set(spec) - {"low", "high", "log"}
        if extra or "low" not in spec or "high" not in spec:
            raise UserError(f"{where}: a range is {{low, high, log}}, got {spec!r}")
        low, high = spec["low"], spec["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low <= high:
            raise UserError(f"{where}: bad range low={low!r} high={high!r} (numbers with low <= high)")
        if spec.get("log") and low <= 0:
            raise UserError(f"{where}: a log range needs low > 0, got {low!r}")
        knob = Knob(
            name,
            low=low,
            high=high,
            log=bool(spec.get("log", False)),
            integer=isinstance(low, int) and isinstance(high, int),
        )
        values = [low, high]
    else:
        knob = Knob(name, choices=(spec,))
        values = [spec]
    for v in values:  # every end of the range must make a valid config
        try:
            cls(**{name: v})
        except (UserError, TypeError, ValueError) as e:
            raise UserError(f"{where}: value {v!r} is not valid ({e})") from None
    return knob


def parse_space(doc: Any, source: str = "<space>") -> SearchSpace:
    if not isinstance(doc, dict) or not isinstance(doc.get("roles"), dict):
        raise UserError(f"space {source}: expected a mapping with 'roles: {{role: {{method: {{knob: range}}}}}}'")
    roles: dict[str, dict[str, dict[str, Knob]]] = {}
    for role, methods in doc["roles"].items():
        if role not in ROLES:
            raise UserError(f"space {source}: unknown role {role!r} (roles: {', '.join(ROLES)})")
        if not isinstance(methods, dict) or not methods:
            raise UserError(f"space {source}: role {role!r} needs a mapping of methods")
        roles[role] = {}
        for method, knobs in methods.items():
            if method == DENSE:
                roles[role][DENSE] = {}
                continue
            cls = config_class(method)  # unknown method -> UserError listing the known ones
            if role not in cls.roles:
                raise UserError(f"space {source}: {method} does not apply to {role} sites")
            if knobs is not None and not isinstance(knobs, dict):
                raise UserError(f"space {source}: {method} under {role} needs a mapping of knobs, got {knobs!r}")
            roles[role][method] = {k: _knob(method, k, v, cls) for k, v in (knobs or {}).items()}
    return SearchSpace(roles, source)


def default_space(sites: list[Site]) -> str:
    """The shipped space for a model: transformer.yaml when it has attention or mlp sites (a
    transformer), default.yaml otherwise."""
    return TRANSFORMER_SPACE if any(s.role in ("attention", "mlp") for s in sites) else DEFAULT_SPACE


def space_digest(space: SearchSpace) -> str:
    """A fingerprint of what a space allows (not of its file's comments or layout): a resumed run
    refuses a space that changed under the same name."""
    return hashlib.sha256(repr(space.roles).encode()).hexdigest()[:16]


def load_space(path: str | Path) -> SearchSpace:
    """A space from a YAML file; `search_spaces/default.yaml` also resolves to the shipped copy."""
    p = Path(path)
    if not p.is_file() and (SHIPPED / p.name).is_file() and p.parent.name in ("search_spaces", ""):
        p = SHIPPED / p.name
    try:
        doc = yaml.safe_load(read_user_text(p, "search space file"))
    except yaml.YAMLError as e:
        raise UserError(f"space {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_space(doc, str(path))


def sample_plan(trial, space: SearchSpace, sites: list[Site]) -> dict[str, MethodConfig]:
    """Each site's method and knobs from the trial (tied partners follow their owner)."""
    plan: dict[str, MethodConfig] = {}
    for site in sites:
        if site.tied_with is not None:
            continue
        methods = [m for m in space.methods_for(site) if m == DENSE or applies(m, site)]
        if not methods:
            continue
        method = methods[0] if len(methods) == 1 else trial.suggest_categorical(f"{site.name}/method", methods)
        if method == DENSE:
            continue
        knobs = space.roles[site.role][method]
        values = {name: knob.suggest(trial, f"{site.name}/{method}/{name}") for name, knob in knobs.items()}
        plan[site.name] = config_class(method)(**values)
    return plan


def applies(method: str, site: Site) -> bool:
    try:
        config_class(method)().check_site(site)
        return True
    except UserError:
        return False


def smallest_plan(space: SearchSpace, sites: list[Site], freqs=None) -> dict:
    """Each site's smallest setting the space allows (sites with no option stay dense)."""
    plan = {}
    for site in sites:
        options = space.smallest_configs(site)
        if options and site.tied_with is None:
            best = min(options, key=lambda c: method_bytes(site, c, freqs))
            if method_bytes(site, best, freqs) < site.dense_bytes:
                plan[site.name] = best
    return plan
