"""Profile: every site under each of its options, alone (all other sites dense), measured on a
fixed validation slice: stored bytes of the method and loss increase (mean NLL per token minus the
dense model's), with the seconds it took.

Rows go to `profile.csv` as they are measured, keyed by the model's and the slice's fingerprints,
the calibration statistics (if any), the site, the option and the fine-tune steps, so an
interrupted profile resumes and a later search of the same model, data and space reuses it. The
activations entering each stage are cached once (replay.py), so a softmax option costs its logits
and an LSTM option its layer and those above.

One option is measured by `measure_option(inputs, job)`, wherever it runs: `profile` hands it, the
inputs every option reads (`ProfileInputs`) and the jobs still to measure to `map_options`, which
runs them one after another here by default (`serial_map`), or elsewhere (the Ray backend's
search/ray_profile.py) and yields each row as it is done, in any order. Only this process writes
the CSV.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import pandas as pd
import torch
from torch import nn

from autoshrink.allocate.finetune import NEEDS_TRAINING, finetune_site
from autoshrink.allocate.replay import Replay, build_site, with_compressed
from autoshrink.data.cache import cache_root
from autoshrink.errors import UserError
from autoshrink.methods import MethodConfig, config_from_dict
from autoshrink.models.discover import discover_sites
from autoshrink.plan import method_bytes
from autoshrink.sites import Site

COLUMNS = ["model", "data", "build", "site", "method", "knobs", "finetune_steps", "bytes", "loss_delta", "seconds"]
KEY = ["model", "data", "build", "site", "knobs", "finetune_steps"]
DENSE = "dense"  # the option every site has: kept as it is, no loss, its dense bytes


def fingerprint(obj: Any) -> str:
    """A short stable hash of tensors, modules, mappings, sequences and plain values."""
    digest = hashlib.sha1()

    def feed(x: Any) -> None:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            feed(type(x).__name__)
            feed({f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
        elif isinstance(x, nn.Module):
            feed(x.state_dict())
        elif isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, Mapping):
            for k in sorted(x, key=str):
                digest.update(str(k).encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            for item in x:
                feed(item)
        else:
            digest.update(repr(x).encode())

    feed(obj)
    return digest.hexdigest()[:16]


def option_key(config: MethodConfig) -> str:
    """The option as one JSON string (method and every knob), the profile's key."""
    return json.dumps(config.to_dict(), sort_keys=True)


class OptionJob(NamedTuple):
    """One option to measure: a site, its config, and the fine-tune steps it gets first."""

    site: str
    config: MethodConfig
    steps: int


@dataclasses.dataclass
class ProfileInputs:
    """What measuring any option reads: the dense model, its sites, the cached activations of the
    slice (Replay), word frequencies, calibration statistics and, for per-site fine-tunes, training
    tokens. Read, never changed, by every measurement (a parallel map ships it once)."""

    model: nn.Module
    sites: Mapping[str, Site]
    replay: Replay
    freqs: torch.Tensor | None = None
    stats: Mapping[str, Any] | None = None
    train_ids: torch.Tensor | None = None


def measure_option(inputs: ProfileInputs, job: OptionJob) -> dict[str, Any]:
    """The profile row of one option (without the model, data and build fingerprints): the site
    built alone, data-aware where `inputs.stats` allows, fine-tuned `job.steps` steps, and its
    loss on the slice against the dense model's."""
    start = time.perf_counter()
    site = inputs.sites[job.site]
    built = build_site(inputs.model, site, job.config, inputs.freqs, inputs.stats)
    if job.steps:
        holder = with_compressed(inputs.model, inputs.sites, {job.site: built})
        finetune_site(holder, built, inputs.train_ids, job.steps)
    loss = inputs.replay.loss(inputs.sites, {job.site: built})
    return {
        "site": job.site,
        "method": job.config.method,
        "knobs": option_key(job.config),
        "finetune_steps": job.steps,
        "bytes": method_bytes(site, job.config, inputs.freqs),
        "loss_delta": loss - inputs.replay.dense_loss,
        "seconds": round(time.perf_counter() - start, 3),
    }


# map_options(measure, inputs, jobs): each job's row, as it is done, in any order.
OptionMap = Callable[[Callable[[ProfileInputs, OptionJob], dict], ProfileInputs, Sequence[OptionJob]], Iterable[dict]]


def serial_map(
    measure: Callable[[ProfileInputs, OptionJob], dict], inputs: ProfileInputs, jobs: Sequence[OptionJob]
) -> Iterator[dict]:
    """The options one after another, in this process."""
    return (measure(inputs, job) for job in jobs)


def read_profile(path: Path | None) -> pd.DataFrame:
    """The rows of a profile.csv (an empty table where there is none); a broken file is a UserError."""
    if path is None or not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    try:
        table = pd.read_csv(path, dtype={"model": str, "data": str, "build": str, "knobs": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"profile {path} is not a readable CSV: {e}") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"profile {path} lacks column(s) {', '.join(missing)}: remove it to profile again")
    return table[COLUMNS]


def profile(
    model: nn.Module,
    valid_ids: torch.Tensor,
    options: Mapping[str, Sequence[MethodConfig]],
    freqs: torch.Tensor | None = None,
    stats: Mapping[str, Any] | None = None,
    path: str | Path | None = None,
    finetune_steps: int = 0,
    train_ids: torch.Tensor | None = None,
    finetune_methods: Sequence[str] = NEEDS_TRAINING,
    replay: Replay | None = None,
    progress: bool = True,
    map_options: OptionMap | None = None,
    shared: bool = True,
) -> pd.DataFrame:
    """One row per (site, option) of `options` ({site name: configs}): bytes, loss_delta, seconds.

    With `finetune_steps` > 0, options of `finetune_methods` get that many steps of training
    (on `train_ids`) before they are measured. Rows already in `path` for the same model, slice,
    statistics and steps are read, not measured again; new rows are appended as they come.
    `map_options` runs the measurements (`serial_map` by default; see OptionMap); rows come back
    in the order of `options` however they were measured. With `shared`, rows are also kept in the
    autoshrink cache under the model's, slice's and statistics' fingerprints (`shared_path`), so a
    later search of the same model, data and calibration in another run folder measures only what
    is new; the rows it reuses are copied into `path`, which stays complete.
    """
    if finetune_steps > 0 and train_ids is None:
        raise UserError("a per-site fine-tune needs training tokens (train_ids)")
    sites = {s.name: s for s in discover_sites(model)}
    unknown = [name for name in options if name not in sites]
    if unknown:
        raise UserError(f"options name unknown site(s) {', '.join(unknown)}; sites: {', '.join(sites)}")
    replay = replay or Replay(model, valid_ids)
    ident = {
        "model": fingerprint(model),
        "data": fingerprint(replay.columns),
        "build": fingerprint(stats) if stats is not None else "plain",
    }
    path = Path(path) if path is not None else None
    table = read_profile(path)
    cache = shared_path(ident) if shared else None
    cached = _read_cache(cache) if cache is not None and cache != path else None
    done = set(_key_tuples(table))
    todo: dict[tuple, OptionJob] = {}  # by key, the options not in `path`, in the order of `options`
    wanted: list[tuple] = []  # this call's keys, in the order of `options`
    for name, configs in options.items():
        for config in configs:
            steps = finetune_steps if config.method in finetune_methods else 0
            key = (ident["model"], ident["data"], ident["build"], name, option_key(config), str(steps))
            wanted.append(key)
            if key not in done:
                done.add(key)
                todo[key] = OptionJob(name, config, steps)
    if cached is not None and todo:  # measured by an earlier search in another run folder: copied, not measured
        hit = cached[[key in todo for key in _key_tuples(cached)]].drop_duplicates(KEY)
        if not hit.empty:
            if path is not None:
                _append(path, hit.to_dict("records"))
            table = pd.concat([table, hit], ignore_index=True)
            for key in _key_tuples(hit):
                del todo[key]
    rows = []
    if todo:
        inputs = ProfileInputs(model, sites, replay, freqs, stats, train_ids)
        bar = _bar(len(todo), progress)
        for row in (map_options or serial_map)(measure_option, inputs, list(todo.values())):
            row = {**ident, **row}
            rows.append(row)
            for out in {path, cache} - {None}:  # one row at a time: an interrupted profile keeps what it measured
                _append(out, [row])
            bar.set_postfix_str(f"{row['site']} {row['method']}")
            bar.update(1)
        bar.close()
    table = pd.concat([table, pd.DataFrame(rows, columns=COLUMNS)], ignore_index=True) if rows else table
    # This call's rows only (a shared file also holds other models, slices, options and steps), in
    # the order asked: rows measured in parallel arrive in any order.
    position = {key: i for i, key in reversed(list(enumerate(wanted)))}
    keys = [(m, d, b, s, k, str(int(f))) for m, d, b, s, k, f in table[KEY].values.tolist()]
    found = pd.Series([position.get(key) for key in keys], index=table.index, dtype="float64")
    order = found.dropna().sort_values(kind="stable").index
    return table.loc[order].reset_index(drop=True)


def shared_path(ident: Mapping[str, str]) -> Path:
    """The cache file of one model, validation slice and set of calibration statistics."""
    return cache_root() / "profiles" / f"{ident['model']}-{ident['data']}-{ident['build']}.csv"


def _read_cache(cache: Path) -> pd.DataFrame | None:
    """The shared cache's rows; one that cannot be read is set aside, not fatal: it only saves time."""
    try:
        return read_profile(cache)
    except UserError:
        cache.rename(cache.with_suffix(".unreadable"))
        return None


def _key_tuples(table: pd.DataFrame) -> list[tuple]:
    return [tuple(key) for key in table[KEY].astype(str).values.tolist()]


def _append(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, mode="a", header=not path.is_file(), index=False)


def row_config(row: Mapping[str, Any]) -> MethodConfig:
    """The option of a profile row."""
    return config_from_dict(json.loads(row["knobs"]))


def _bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="profile", unit="option", disable=not enabled or total == 0, leave=False)
