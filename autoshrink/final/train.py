"""Final training of one front plan (`autoshrink train`): longer than a trial, resumable, exported.

    train_trial(run_dir, trial="best")   # or a trial number, or "smallest:<ppl>"

The plan comes from the run's study: `best` is the front trial with the lowest validation
perplexity, a number names any feasible completed trial, `smallest:<ppl>` the front plan with
the fewest stored bytes whose validation perplexity is at most <ppl>. The dense model and the
corpus come from run.json. The plan compresses the dense model afresh and train_lm trains it;
the methods' schedules (gradual pruning, the doping anneal with CMR) run over the whole final
training, and the best validated state after they settle is kept.

Resuming: every validation writes OUT/checkpoint/ (model.safetensors of the current weights,
best.safetensors of the best validated ones, state.json with the step). A later call with the
same OUT continues from that step up to its own `steps`: the weights and the schedules' position
carry over; the optimizer state (Adam moments, learning-rate cuts) and the position in the data
stream start afresh. Then the model is exported to OUT (RUN_DIR/final by default) with
metrics.json: val_ppl, test_ppl, stored_bytes, ratio, latency_ms, tokens_per_s, steps, seconds, trial.
"""

from __future__ import annotations

import copy
import json
import shlex
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from autoshrink.calibrate import DEFAULT_TOKENS, calibrate
from autoshrink.data import LMData, batchify, bptt_windows, load_lm_data, num_windows
from autoshrink.errors import UserError, read_user_json
from autoshrink.methods import CompressedLinear
from autoshrink.final.evaluate import corpus_source, measure
from autoshrink.final.export import save_compressed
from autoshrink.models.presets import PRESETS
from autoshrink.models.discover import discover_sites
from autoshrink.models import training
from autoshrink.models.training import evaluate_perplexity, pick_device, settles_at, train_lm
from autoshrink.plan import compress, parse_plan, stored_bytes
from autoshrink.provenance import source_commit
from autoshrink.final.config import DEFAULT_EPOCHS, TrainConfig
from autoshrink.models.adapter import adapt
from autoshrink.models.load import load
from autoshrink.search import run_folder
from autoshrink.search.trial import TrialSettings

EVALS = TrainConfig.evals  # validations (and checkpoints) per final training


@dataclass
class FinalModel:
    out: Path
    metrics: dict
    model: nn.Module  # the trained model as exported (CPU, eval mode)


# --- which trial ----------------------------------------------------------------------------
def choose_trial(run_dir: str | Path, trial: str | int = "best") -> tuple[int, dict]:
    """(trial number, plan JSON) of `trial` in the run's study."""
    f = run_folder.read(run_dir)
    spec = str(trial).strip()
    if spec == "best" or spec.startswith("smallest:"):
        front = f.front
        if front.empty:
            raise UserError(f"{run_dir}: no feasible completed trial on the front yet; let the search run longer")
        if spec.startswith("smallest:"):
            try:
                limit = float(spec.split(":", 1)[1])
            except ValueError:
                raise UserError(f"--trial {spec!r}: expected smallest:<val ppl>, e.g. smallest:150") from None
            front = front[front["val_ppl"] <= limit]
            if front.empty:
                raise UserError(
                    f"{run_dir}: no front trial has val ppl <= {limit:g} "
                    f"(the front's best is {f.front['val_ppl'].min():.2f})"
                )
            row = front.sort_values("stored_bytes").iloc[0]
        else:
            row = front.sort_values("val_ppl").iloc[0]
        return int(row["number"]), json.loads(row["plan"])
    if not spec.lstrip("-").isdigit():
        raise UserError(f"--trial {spec!r}: use best, a trial number, or smallest:<val ppl>")
    number = int(spec)
    rows = f.trials[f.trials["number"] == number]
    if rows.empty:
        raise UserError(f"{run_dir}: no trial {number} (the study has {len(f.trials)} trial(s))")
    row = rows.iloc[0]
    if row["state"] != "COMPLETE" or not bool(row["feasible"]):
        what = row["state"] if row["state"] != "COMPLETE" else "COMPLETE but over budget"
        raise UserError(
            f"{run_dir}: trial {number} is {what}; pick a feasible completed trial (autoshrink front {run_dir})"
        )
    return number, json.loads(row["plan"])


# --- where the model and data came from -------------------------------------------------------
def _data_of(info: dict, data: str | None) -> str:
    """The search's corpus: `data`, else run.json's, else the --data of the recorded command
    (run.json's `data` may be a corpus's short key, not its path)."""
    if data:
        return data
    for candidate in (info.get("data_path"), info.get("data"), _flag(info.get("command", ""), "--data")):
        if corpus_source(candidate):
            return candidate
    raise UserError(
        f"run.json records the corpus {info.get('data')!r}, which is not a path here: "
        "pass --data (the corpus the search used)"
    )


def _flag(command: str, flag: str) -> str | None:
    try:
        args = shlex.split(command)
    except ValueError:
        return None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _model_of(info: dict, model: str | None) -> str:
    name = model or info.get("model")
    if not name or (name not in PRESETS and not Path(name).expanduser().exists()):
        raise UserError(
            f"run.json records the model {name!r}, which is neither a preset nor a folder here: "
            "pass --model (the dense model the search compressed)"
        )
    return name


# --- checkpoints ----------------------------------------------------------------------------
CHECKPOINT_STATE = "state.json"  # written last: a checkpoint folder with it holds a complete step


def _read_checkpoint(folder: Path, model: nn.Module, number: int, plan: dict) -> dict | None:
    """Load OUT/checkpoint into `model` and return its state, or None when there is none."""
    path = folder / CHECKPOINT_STATE
    if not path.is_file():
        return None
    try:
        state = read_user_json(path, "checkpoint")
    except UserError as e:
        raise UserError(f"{e}: delete {folder} to start over") from None
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is corrupt (not a JSON object): delete {folder} to start over")
    if state.get("trial") != number or state.get("plan") != plan:
        raise UserError(
            f"{folder} holds the training of {state.get('trial')!r}, not {number!r}: "
            "use another --out, or delete it to start over"
        )
    _load_weights(model, folder / "model.safetensors")
    return state


def _same_recipe(trained: dict, asked: dict, folder: Path) -> None:
    """A resume goes on with the recipe its checkpoint began with: one segment at another learning
    rate or distillation weight would make the run's recorded recipe untrue."""
    for key, value in asked.items():
        if trained.get(key, value) != value:
            raise UserError(
                f"{folder} was trained with {key} {trained[key]}, this call asks {value}: "
                "resume with the same settings, or use another --out"
            )


def _load_weights(model: nn.Module, path: Path) -> None:
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except (SafetensorError, OSError, RuntimeError) as e:
        raise UserError(f"checkpoint {path} cannot be read ({e}): delete {path.parent} to start over") from None
    if missing or unexpected:
        raise UserError(f"checkpoint {path} does not match the plan: delete {path.parent} to start over")


def _write_checkpoint(folder: Path, model: nn.Module, state: dict, best: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors",) + (("best.safetensors",) if best else ()):
        save_model(model, str(folder / (name + ".tmp")))
        (folder / (name + ".tmp")).replace(folder / name)
    _write_state(folder, state)  # last: it names a complete step


def _write_state(folder: Path, state: dict) -> None:
    (folder / CHECKPOINT_STATE).write_text(json.dumps(state, indent=1) + "\n")


@contextmanager
def _resumed_schedules(model: nn.Module, start: float):
    """Let train_lm's run drive the schedules from fraction `start` (where the checkpoint left
    them) to 1, instead of from 0: train_lm tells modules the fraction of its own run, and a
    resumed run is only the tail of the final training. Settle points are mapped the same way."""
    if start <= 0:
        yield
        return
    patched = [
        (m, {k: m.__dict__[k] for k in ("on_progress", "settles_at") if k in m.__dict__})
        for m in model.modules()
        if m is not model and callable(getattr(m, "on_progress", None))
    ]
    for m, _ in patched:  # instance attributes shadow the class's for this run only
        hook, settle = m.on_progress, getattr(m, "settles_at", 0.0)
        m.on_progress = lambda f, hook=hook: hook(start + (1.0 - start) * f)
        m.settles_at = max(0.0, (settle - start) / (1.0 - start)) if start < 1 else 0.0
    try:
        yield
    finally:
        for m, saved in patched:
            del m.on_progress, m.settles_at
            m.__dict__.update(saved)


def _start_from(
    model: nn.Module, weights: Path | None, state: dict, ckpt: Path, lm: LMData, name: str, log: Callable[[str], None]
) -> None:
    """Load the trial's fine-tuned weights when they were kept, and validate them as the state to
    beat: the final training then never ends worse than the trial it came from. Say which start it is."""
    if weights is not None:
        try:
            _load_weights(model, weights)
        except UserError:
            log(f"{name}: its kept weights {weights} do not match the plan: starting from the dense model")
            return
        val = evaluate_perplexity(model, lm.valid)
        state.update(fraction=1.0, best_val_ppl=val, history=[{"step": 0, "val_ppl": val, "fraction": 1.0}])  # settled
        _write_checkpoint(ckpt, model, state, best=True)
        log(f"{name}: starting from its fine-tuned weights ({weights}; val ppl {val:.2f}, whole valid split)")
    else:
        log(
            f"{name}: starting from the dense model, compressed afresh (no kept fine-tuned weights, or --no-trial-weights)"
        )


# --- final training -------------------------------------------------------------------------
REPLAY_TOKENS = 100_000  # training text a method's on_validation hook sees (a prefix, said in its log)


@torch.no_grad()
def site_inputs(
    model: nn.Module,
    module: nn.Module,
    ids: torch.Tensor,
    batch_size: int = 32,
    bptt: int = 35,
    max_tokens: int = REPLAY_TOKENS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows entering `module`, next words) per window of the model run over a prefix of `ids`."""
    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        state = None
        for x, y in bptt_windows(batchify(ids[:max_tokens], batch_size).to(device), bptt):
            seen.clear()
            _, state = model(x, state)
            h = seen[-1]
            yield h.reshape(-1, h.shape[-1]), y.reshape(-1)
    finally:
        hook.remove()
        model.train(was_training)


def tell_validation(
    model: nn.Module, ids: torch.Tensor, fraction: float, batch_size: int = 32, bptt: int = 35
) -> list[str]:
    """Call every compressed weight's `on_validation` hook (the method contract); their log lines."""
    lines = []
    for module in model.modules():
        if isinstance(module, CompressedLinear):
            line = module.compressed.on_validation(
                fraction, lambda m=module: site_inputs(model, m, ids, batch_size, bptt)
            )
            if line:
                lines.append(line)
    return lines


def train_trial(
    run_dir: str | Path,
    config: TrainConfig | None = None,
    on_log: Callable[[dict], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> FinalModel:
    """Train one plan of a run longer, resumably, and export it (see the module docstring)."""
    c = config or TrainConfig()
    trial, steps, epochs, out, data, model = c.trial, c.steps, c.epochs, c.out, c.data, c.model
    device, distill, seed, evals, time_limit = c.device, c.distill, c.seed, c.evals, c.time
    run_dir = Path(run_dir)
    info = run_folder.read_run(run_dir)
    number, plan_json = choose_trial(run_dir, trial)
    corpus = _data_of(info, data)
    if isinstance(model, nn.Module):  # the user's own torch model the search compressed (models/adapter.py)
        lm = load_lm_data(corpus, vocab=getattr(model, "vocab", None))
        dense = adapt(model, lm.vocab)
    else:
        dense = load(_model_of(info, model), data=corpus, device=device)  # the search's dense model, whatever its seed
        lm = load_lm_data(corpus, vocab=dense.vocab)
    if steps is None:
        settings = TrialSettings()
        per_epoch = num_windows(batchify(lm.train, settings.batch_size), settings.bptt)
        steps = max(1, round((epochs if epochs is not None else DEFAULT_EPOCHS) * per_epoch))
    return train_plan(
        dense,
        lm,
        plan_json,
        Path(out) if out else run_dir / "final",
        steps,
        label=number,
        corpus=corpus,
        device=device,
        distill=distill,
        seed=seed,
        evals=evals,
        time_limit=time_limit,
        options={"lr": c.lr, "schedule": c.schedule, "distill_weight": c.distill_weight},
        info={"run_dir": str(run_dir), "trial": number},
        dense_val_ppl=info.get("dense_val_ppl"),
        on_log=on_log,
        on_eval=on_eval,
        log=log,
        start_weights=run_folder.kept_weights(run_dir, number) if c.trial_weights else None,
        calibration_tokens=DEFAULT_TOKENS if info.get("calibration_tokens") is None else info["calibration_tokens"],
    )


def _settled(history: list[dict], settle: float) -> tuple[tuple[int, float], ...]:
    """The validations of a checkpoint's history made at the stored form (their schedule fraction
    at or past `settle`); none from a checkpoint that did not record fractions."""
    if any("fraction" not in h for h in history):
        return ()
    return tuple((h["step"], h["val_ppl"]) for h in history if h["fraction"] >= settle)


def _prior_history(state: dict, settle: float) -> tuple[tuple[int, float], ...]:
    """What early stopping carries into this segment: the settled validations; after a plateau stop
    (a new cap asks for more) only the best of them, so patience counts afresh and no finished
    cooldown is applied again."""
    history = _settled(state["history"], settle)
    if state.get("stopped") == "plateau" and history:
        return (min(history, key=lambda h: h[1]),)
    return history


def train_plan(
    dense: nn.Module,
    lm: LMData,
    plan_json: dict,
    out: Path,
    steps: int,
    label: int | str = "plan",
    corpus: str = "kjv",
    device: str = "auto",
    distill: bool = True,
    seed: int = 0,
    evals: int = EVALS,
    info: dict | None = None,
    dense_val_ppl: float | None = None,
    time_limit: float | None = None,
    options: dict | None = None,
    on_log: Callable[[dict], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    start_weights: Path | None = None,
    calibration_tokens: int = DEFAULT_TOKENS,
) -> FinalModel:
    """Compress `dense` by `plan_json` ({} keeps it dense), train it up to `steps` steps (and
    `time_limit` seconds, across resumes) with train_lm's recipe and the trials' batch and bptt,
    resumably in OUT/checkpoint, and export it to OUT with metrics.json. `label` names the
    training in its checkpoint (a trial number); `options` are further training-loop settings.
    `start_weights`: the trial's fine-tuned weights (search/run_folder.py kept_weights) to start
    from instead of the freshly compressed dense weights. A fresh compression is data-aware, as the
    search's is: calibrated on `calibration_tokens` training tokens (cached; 0: plain builds)."""
    log = log or (lambda line: None)
    name = f"trial {label}" if isinstance(label, int) else str(label)
    plan = parse_plan(plan_json)
    torch.manual_seed(seed)
    ckpt = out / "checkpoint"
    fresh = start_weights is None and not (ckpt / CHECKPOINT_STATE).is_file()  # else its weights are loaded
    stats = (
        calibrate(dense, lm.train, tokens=calibration_tokens, freqs=lm.vocab.freqs)
        if fresh and calibration_tokens
        else None
    )
    small = compress(dense, plan, freqs=lm.vocab.freqs, stats=stats)
    settings = TrialSettings()  # the trials' batch, bptt and learning rate
    opts = options or {}
    recipe = {
        "lr": opts.get("lr", training.DEFAULT_LR),
        "schedule": opts.get("schedule", "cosine"),
        "distill": distill,
        "distill_weight": opts.get("distill_weight", training.DEFAULT_DISTILL_WEIGHT) if distill else 0.0,
    }
    state = _read_checkpoint(ckpt, small, label, plan_json) or {
        "recipe": recipe,
        "trial": label,
        "plan": plan_json,
        "start": "trial weights" if start_weights is not None else "fresh",  # a resume keeps where it began
        "step": 0,
        "fraction": 0.0,
        "best_val_ppl": None,
        "seconds": 0.0,
        "history": [],
    }
    # a checkpoint from before recipes were kept takes this call's
    _same_recipe(state.setdefault("recipe", recipe), recipe, ckpt)
    if not state["step"]:
        _start_from(small, start_weights, state, ckpt, lm, name, log)
    done, start = state["step"], state["fraction"]  # the schedules' position: a finished run stays finished
    settle = settles_at(small)
    plateaued = state.get("stopped") == "plateau" and state.get("steps_cap") == steps
    remaining = 0 if plateaued else max(0, steps - done)  # a run stopped at its plateau stays stopped
    if plateaued:
        log(f"{name} stopped at its plateau at step {done} ({ckpt}): nothing more to train for --steps {steps}")
    elif done:
        log(f"resuming {name} from step {done} ({ckpt}); training up to step {steps}")
    prior_seconds, started = state["seconds"], time.perf_counter()

    def checkpoint(step: int, val: float) -> None:
        fraction = start + (1.0 - start) * step / remaining
        best = fraction >= settle and (state["best_val_ppl"] is None or val < state["best_val_ppl"])
        if best:
            state["best_val_ppl"] = val
        state.update(step=done + step, fraction=fraction, seconds=prior_seconds + time.perf_counter() - started)
        # one entry per step: a run killed after its step-0 validation validates its start again
        state["history"] = [h for h in state["history"] if h["step"] != done + step]
        state["history"].append({"step": done + step, "val_ppl": val, "fraction": fraction})
        _write_checkpoint(ckpt, small, state, best)
        if on_eval is not None:
            on_eval(done + step, val)
        for line in tell_validation(small, lm.train, fraction, settings.batch_size, settings.bptt) if step else ():
            log(f"step {done + step}: {line}")  # not at step 0: the start is validated before any training

    if remaining:
        state["commits"] = state.get("commits", []) + [source_commit()]  # one per training segment
        time_left = None if time_limit is None else max(0.0, time_limit - prior_seconds)
        cfg = training.TrainConfig(
            **{
                "steps": steps,
                "schedule_from": done,
                "time": time_left,
                "batch_size": settings.batch_size,
                "bptt": settings.bptt,
                "eval_every": max(1, steps // max(1, evals)),
                "device": device,
                "seed": seed + done,
                "distill_from": copy.deepcopy(dense) if distill else None,
                "validate_start": not done,
                "prior_history": _prior_history(state, settle),  # early stopping goes on from them
                **opts,
            }
        )
        with _resumed_schedules(small, start):
            trained = train_lm(small, lm.train, lm.valid, cfg, on_log=on_log, on_eval=checkpoint)
        state["stopped"] = trained.stopped
        state["cooldown_from"] = trained.cooldown_from  # this segment's, or the earlier one it went on with
        if trained.stopped == "plateau":
            cooled = (
                f", then cooled down from step {state['cooldown_from']}" if state["cooldown_from"] is not None else ""
            )
            log(f"{name}: validation stopped improving{cooled}; stopped at step {state['step']}")
        state["steps_cap"] = steps
        _write_state(ckpt, state)  # why it ended, for a rerun
    if (ckpt / "best.safetensors").is_file():  # the best validated state over every segment
        _load_weights(small, ckpt / "best.safetensors")
    small.cpu().eval()
    val = evaluate_perplexity(small, lm.valid)
    metrics = {
        **measure(small, lm),
        "val_ppl": val,
        "steps": state["step"],
        "seconds": state["seconds"],
        "trial": label,
        "resumed_from": done,
        "device": str(pick_device(device)),
        **recipe,
        "steps_cap": steps,
        "stopped": state.get("stopped"),
        "cooldown_from": state.get("cooldown_from"),  # where the lr began its decay to zero (a plateau stop)
        "dense_val_ppl": dense_val_ppl,
        "commits": state.get("commits", []),  # the code of each segment that trained (None: not a git checkout)
        "history": state["history"],
    }
    corpus_path = corpus if corpus == "kjv" else str(Path(corpus).expanduser().resolve())
    save_compressed(
        small, plan, out, dense.meta, metrics, info={"data": corpus_path, **(info or {})}, sites=discover_sites(dense)
    )
    log(
        f"{name}: val ppl {val:.2f}, test ppl {metrics['test_ppl']:.2f}, "
        f"{stored_bytes(small):,} bytes ({metrics['ratio']:.1f}x) -> {out}"
    )
    return FinalModel(out, metrics, small)
