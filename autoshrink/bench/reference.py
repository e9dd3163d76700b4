"""The reference benchmark (docs/benchmark.md): autoshrink against every single method.

    python -m autoshrink.bench                    # everything; resumes; rewrites results/BENCHMARK.md
    python -m autoshrink.bench --rows 25x lstm-25x --part 0/2   # a share of the work, in parallel
    python -m autoshrink.bench --report-only      # the report from what has been measured so far

Rows: whole-model budgets 10x, 25x, 50x, 100x, and the papers' scopes (the LSTM layers alone at
25x; embedding + softmax alone at 6.6x without quantisation and 26x with it). Entrants per row:
the dense control (the pretrained model fine-tuned for the same steps: one run serves every
row), each single method applied uniformly with its size knob fitted to just meet the row's
byte limit (budget.uniform_plan), and autoshrink (`autoshrink search` with the row's space, then
final training of its best front plan). Every trained entrant gets the same final-training steps
(`train_plan`), then test perplexity, stored bytes (checked against the exported file), CPU
latency and tokens/s are measured on it.

Each entrant lands in WORK/<row>/<entrant>/ (an export with metrics.json), and a training that
was cut off resumes from its checkpoint: the benchmark can run in parts and over several
sessions; the report says which entrants have not run yet.

Two tiers (--tier): **quick** (every row and entrant, a fixed `--steps` [200] each, no
distillation, WORK = results/runs/bench) and **converged** (the rows of CONVERGED_ROWS; the dense
control, the best uniform plan, the small dense model and autoshrink; train_lm's recipe to a
plateau, at most 3 epochs, distilled from the dense model; WORK = results/runs/bench-converged).
Single methods are stored at their best width (bench/entrants.py); the small dense model is the
reference architecture shrunk to the budget, 8-bit, trained from scratch at the reference model's
pretraining learning rate.
"""

from __future__ import annotations

import json
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from autoshrink.bench.report import commit
from autoshrink.models.schedule import COOLDOWN


WORK = Path("results/runs/bench")
WORKS = {"quick": WORK, "converged": Path("results/runs/bench-converged")}
# Experiments whose plans train exactly as an entrant does (train_entrant with the benchmark's
# Setup: bench/toward_uniform.py). An entrant takes an identical training from them, or from
# another entrant of its row, instead of repeating it (an hour or more in the converged tier).
EXPERIMENTS = {"quick": Path("results/runs/toward-uniform"), "converged": Path("results/runs/toward-uniform-converged")}
# results/runs is a machine's scratch (a new checkout has none): each entrant of the benchmark's own
# folders also keeps its bench.json here, committed, and the report reads it where the folder is gone.
RECORDS = Path("results/bench-records")
PROTOCOL = 2  # issue 16: best storage per single method, small dense, best uniform, tiers
QUICK_STEPS = 200  # the quick tier's final-training steps per entrant (--steps)
QUICK_EVALS = 5  # and its validations (and checkpoints) per training
SEARCH_TRIALS, SEARCH_FINETUNE_STEPS = 8, 80  # autoshrink's search per row (--trials, --finetune-steps)
CONVERGED_ROWS = ("25x", "lstm-25x")
CONVERGED_EPOCHS = 3.0
CONVERGED_EVALS = 12  # validations (and checkpoints) per converged training: about every quarter epoch
# The converged tier's distillation weight, as its entrants were measured (final training's default
# is now 0.25: bench/compass); changing it means measuring the whole tier again.
CONVERGED_DISTILL_WEIGHT = 0.5
BEST_UNIFORM, SMALL_DENSE = "best-uniform", "small-dense"
WHOLE = None  # every site


@dataclass(frozen=True)
class Row:
    """One comparison: a byte limit for the whole model, from a ratio on a scope of sites."""

    name: str  # "25x", "lstm-25x", ...
    ratio: float
    roles: frozenset | None  # the scope (None: the whole model)
    space: str  # autoshrink's search space for this scope
    scope: str  # for the report
    singles: dict = field(default_factory=dict)  # entrant name -> base method config


# Each single method at its best storage width (bench/entrants.py) unless its bits are fixed
# here; quantisation is its own entrant (docs/benchmark.md: "k-bit quantization where it alone can
# reach the budget"); Kronecker doped at 1% as in the paper;
# GroupReduce with docs/methods.md's largest block count (10): with 4 blocks the frequency-scaled
# ranks leave the head block dense and the softmax cannot go below 4x.
SINGLES = {
    "lowrank": {"method": "lowrank"},
    "groupreduce": {"method": "groupreduce", "blocks": 10},
    "kronecker": {"method": "kronecker", "density": 0.01},
    "prune": {"method": "prune"},
    "quant": {"method": "quant", "bits": 8},
    "tt": {"method": "tt"},
    "hash": {"method": "hash"},
    "lightrnn": {"method": "lightrnn"},
}
VOCAB = frozenset({"embedding", "softmax"})
ROWS = {
    r.name: r
    for r in [
        *(Row(f"{k}x", k, WHOLE, "search_spaces/default.yaml", "whole model", SINGLES) for k in (10, 25, 50, 100)),
        Row(
            "lstm-25x",
            25,
            frozenset({"recurrent"}),
            "search_spaces/lstm-only.yaml",
            "LSTM layers only",
            {k: SINGLES[k] for k in ("kronecker", "prune", "lowrank", "tt", "quant")},
        ),
        Row(
            "vocab-6.6x",
            6.6,
            VOCAB,
            "search_spaces/vocab-only-fp32.yaml",
            "embedding + softmax, fp32",
            # the paper's scope without quantisation, as autoshrink's space here: every single
            # method stored fp32 (at its best width they stored 4-8 bits and won by width alone)
            {
                k: {**SINGLES[k], "bits": 32}
                for k in ("groupreduce", "lowrank", "hash", "lightrnn", "prune", "kronecker")
            },
        ),
        Row(
            "vocab-26x",
            26,
            VOCAB,
            "search_spaces/vocab-only.yaml",
            "embedding + softmax, quantised",
            # each at its best storage, as on the whole-model rows (autoshrink's space here offers 4-16
            # bits); GroupReduce with 16 blocks: at 8 bits 10 blocks leave the softmax at 26.4x before its bias
            {
                "groupreduce": {"method": "groupreduce", "blocks": 16},
                "lowrank": SINGLES["lowrank"],
                "hash": SINGLES["hash"],
                "quant": SINGLES["quant"],
            },
        ),
    ]
}
PAPER = {
    "lstm-25x": "Doped Kronecker paper at this scope: doped KP +1.4%, pruning +7.9%, HMD +15%, low-rank +27%",
    "vocab-6.6x": "GroupReduce paper: 6.6x on embedding + softmax with little loss",
    "vocab-26x": "GroupReduce paper: 26x with quantisation",
}


@dataclass
class Setup:
    """What every entrant shares: the dense model, its data and sizes, the training length."""

    model_name: str
    steps: int
    trials: int
    finetune_steps: int
    work: Path
    seed: int = 0
    data: str = "kjv"  # the corpus (kjv for the reference benchmark; tests use a tiny text file)
    tier: str = "quick"
    converged_work: Path = WORKS["converged"]
    stop_early: bool = True  # the converged tier stops at a plateau (False: it trains every step)
    # `seed` also names the dense model (a preset at another seed is pretrained afresh, an hour for
    # kjv-lstm); train_seed, where given, seeds only the entrants' training (bench/toward_uniform --seed).
    train_seed: int | None = None
    # The converged recipe's cap and distillation weight; bench/compass trains plans with one changed.
    converged_epochs: float = CONVERGED_EPOCHS
    distill_weight: float = CONVERGED_DISTILL_WEIGHT

    @property
    def training_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    @property
    def tier_work(self) -> Path:
        """Where this tier's entrants live (`work` holds the quick tier)."""
        return self.work if self.tier == "quick" else self.converged_work

    def __post_init__(self):
        from autoshrink.models.load import load
        from autoshrink.data import load_lm_data
        from autoshrink.models import discover_sites
        from autoshrink.plan import ModelFile, dense_bytes

        # The code this process runs was imported now: a commit made while a long benchmark runs
        # is not what measured its entrants.
        self.commit = commit()
        self.dense = load(self.model_name, data=self.data, seed=self.seed)
        self.lm = load_lm_data(self.data, vocab=self.dense.vocab)
        self.sites = discover_sites(self.dense)
        self.dense_bytes = dense_bytes(self.dense)
        self.model_file = ModelFile.of(self.dense, self.sites)
        self.model_bytes = self.model_file.bytes  # the dense model's export, header included

    def scope_bytes(self, row: Row) -> int:
        return sum(
            s.dense_bytes for s in self.sites if s.tied_with is None and (row.roles is None or s.role in row.roles)
        )

    def max_bytes(self, row: Row) -> int:
        """The row's limit for the whole model: the scope at 1/ratio, everything else dense."""
        scope = self.scope_bytes(row)
        return (
            int(self.model_bytes - scope + scope / row.ratio)
            if row.roles is not None
            else int(self.dense_bytes // row.ratio)
        )


# --- running entrants ---------------------------------------------------------------------------
def train_entrant(setup: Setup, plan_json: dict, out: Path, label: str, extra: dict, model=None) -> dict:
    """Train `model` (default: the dense model) compressed by `plan_json` with the tier's recipe."""
    from autoshrink.data import batchify, num_windows
    from autoshrink.final.export import file_bytes
    from autoshrink.final.train import train_plan

    started = time.time()
    recipe = _recipe(setup, scratch=model is not None)
    options = {"lr": recipe["lr"]}
    if recipe["distill"]:
        options["distill_weight"] = recipe["distill_weight"]
    if model is not None:  # trained from scratch: the teacher is still the dense model
        options["distill_from"] = setup.dense if recipe["distill"] else None
    if recipe["cooldown"] is None:  # no plateau stop: every step of the cap
        options["patience"] = None
    if setup.tier == "quick":  # a fixed short budget for every entrant
        steps, evals = setup.steps, QUICK_EVALS
    else:
        steps = round(setup.converged_epochs * num_windows(batchify(setup.lm.train, 32), 35))
        evals = round(CONVERGED_EVALS * setup.converged_epochs / CONVERGED_EPOCHS)  # validations as often
    final = train_plan(
        model if model is not None else setup.dense,
        setup.lm,
        plan_json,
        out,
        steps,
        label=label,
        corpus=setup.data,
        seed=setup.training_seed,
        evals=evals,
        distill=recipe["distill"] and model is None,
        options=options,
        info={"bench": label},
        log=lambda line: print(line, flush=True),
    )
    in_file = file_bytes(out)
    if in_file != final.metrics["stored_bytes"]:
        raise RuntimeError(f"{out}: the file holds {in_file} bytes, the model {final.metrics['stored_bytes']}")
    result = {
        **{k: final.metrics[k] for k in ("test_ppl", "val_ppl", "stored_bytes", "latency_ms", "tokens_per_s", "steps")},
        "steps_cap": steps,
        "train_seconds": final.metrics["seconds"],
        "file_bytes": in_file,
        "plan": plan_json,
        "session_seconds": time.time() - started,
        "commit": setup.commit,
        "stopped": final.metrics.get("stopped"),
        **recipe,
        **extra,
    }
    return _record(out, result)


def _recipe(setup: Setup, scratch: bool = False) -> dict:
    """How the tier trains an entrant, as its bench.json records it and as an identical training
    (_same_training) must have been trained: `cooldown` is the plateau rule's (models/schedule.py),
    None where the run takes every step of its cap."""
    from autoshrink.models.training import DEFAULT_LR

    converged = setup.tier == "converged"
    return {
        "tier": setup.tier,
        "protocol": PROTOCOL,
        "distill": converged,
        "distill_weight": setup.distill_weight if converged else 0.0,
        "epochs": setup.converged_epochs if converged else None,  # the quick tier's cap is --steps
        "lr": scratch_lr(setup.model_name) if scratch else DEFAULT_LR,
        "seed": setup.training_seed,
        "model": setup.model_name,
        "data": setup.data,
        "cooldown": COOLDOWN if converged and setup.stop_early else None,
    }


def scratch_lr(model_name: str) -> float:
    """The learning rate a model trained from scratch gets: its preset's pretraining rate (2e-3 for
    kjv-lstm; the compressed entrants' 5e-4 is for fine-tuning a trained model, and left the small
    dense model at val ppl 280 after 0.6 epochs), else final training's default."""
    from autoshrink.models.presets import PRESETS
    from autoshrink.models.training import DEFAULT_LR

    preset = PRESETS.get(model_name)
    return preset.train.lr if preset is not None else DEFAULT_LR


def _unreachable(out: Path, reason: str) -> dict:
    return _record(out, {"unreachable": reason})


def entrant_dir(work: Path, row_name: str, entrant: str) -> Path:
    """Where an entrant is trained and kept: WORK/dense for the control, else WORK/<row>/<entrant>."""
    return work / "dense" if row_name == "dense" else work / row_name / entrant


def run_dense(setup: Setup) -> dict:
    return train_entrant(setup, {}, entrant_dir(setup.tier_work, "dense", "dense"), "dense control", {})


def run_single(setup: Setup, row: Row, name: str) -> dict:
    from autoshrink.bench.entrants import best_storage_plan

    out = entrant_dir(setup.tier_work, row.name, name)
    base = row.singles[name]
    plan, tried = best_storage_plan(setup, row, base)
    if plan is None:
        return _unreachable(out, f"{base['method']} alone cannot reach {row.ratio:g}x on the {row.scope}")
    return train_once(setup, row, plan, out, f"{row.name} {name}", {"storage_candidates": tried})


def choose_best_uniform(setup: Setup, row: Row) -> tuple[str, dict, str] | None:
    """(single method, plan, basis): the single method with the lowest validation perplexity of
    the quick tier (its trained plans), or, before the quick tier has run every single method of
    the row (a choice among some would depend on the order they ran in), at initialisation."""
    quick = {e: result_of(setup.work, row.name, e) for e in row.singles}
    trained = {e: r for e, r in quick.items() if r and "val_ppl" in r and r.get("protocol") == PROTOCOL}
    if trained and all(r is not None for r in quick.values()):
        name, r = min(trained.items(), key=lambda kv: kv[1]["val_ppl"])
        return name, r["plan"], f"lowest val ppl of the quick tier ({r['val_ppl']:.2f})"
    from autoshrink.bench.entrants import best_storage_plan

    best = None
    for name, base in row.singles.items():
        plan, tried = best_storage_plan(setup, row, base)
        if plan is not None:
            val = min(t["init_val_ppl"] for t in tried)
            best = (val, name, plan) if best is None or val < best[0] else best
    return None if best is None else (best[1], best[2], f"lowest val ppl at initialisation ({best[0]:.2f})")


def run_best_uniform(setup: Setup, row: Row) -> dict:
    out = entrant_dir(setup.tier_work, row.name, BEST_UNIFORM)
    chosen = choose_best_uniform(setup, row)
    if chosen is None:
        return _unreachable(out, f"no single method reaches {row.ratio:g}x on the {row.scope}")
    name, plan, basis = chosen
    return train_once(setup, row, plan, out, f"{row.name} {BEST_UNIFORM}", {"method": name, "chosen_by": basis})


def train_once(setup: Setup, row: Row, plan: dict, out: Path, label: str, extra: dict) -> dict:
    """train_entrant, unless the same plan was already trained the same way (_trained_twin): then
    that result, with `extra` and where it came from (`same_plan_as`)."""
    twin = _trained_twin(setup, row, plan)
    if twin is not None:
        source, result = twin
        return _record(out, {**result, **extra, "same_plan_as": source})
    return train_entrant(setup, plan, out, label, extra)


def _trained_twin(setup: Setup, row: Row, plan: dict) -> tuple[str, dict] | None:
    """(where, result) of a training of exactly `plan` by this protocol, tier and seed: another
    entrant of the row, or an experiment (EXPERIMENTS). The same plan, recipe and seed train the
    same model, so the benchmark does not spend hours on it twice (at lstm-25x and 100x the search
    chose its uniform low-rank control; bench/toward_uniform trains the lstm-25x search's plans)."""
    found = [(e, result_of(setup.tier_work, row.name, e)) for e in entrants_of(row, setup.tier)]
    found += [
        (str(p.parent), json.loads(p.read_text()))
        for p in sorted((EXPERIMENTS[setup.tier] / row.name).glob("*/bench.json"))
    ]
    for source, done in found:
        if done is not None and _same_training(setup, plan, done):
            return source, {k: done[k] for k in TWIN_KEYS if k in done}
    return None


# what an entrant takes from an identical training: its measurements, plan and how it was trained
TWIN_KEYS = ("test_ppl", "val_ppl", "stored_bytes", "latency_ms", "tokens_per_s", "steps", "train_seconds")
TWIN_KEYS += ("file_bytes", "plan", "commit", "stopped", "tier", "protocol", "distill", "lr", "seed", "model", "data")
TWIN_KEYS += ("cooldown", "distill_weight", "epochs")
LEGACY = {"seed": 0, "model": "kjv-lstm", "data": "kjv"}  # what results from before these were recorded ran
LEGACY_BY_TIER = {  # the same, for keys whose old value depends on the tier
    "quick": {"distill_weight": 0.0, "epochs": None},
    "converged": {"distill_weight": CONVERGED_DISTILL_WEIGHT, "epochs": CONVERGED_EPOCHS},
}


def _same_training(setup: Setup, plan: dict, done: dict) -> bool:
    """Whether `done` trained `plan` as this setup would train a compressed entrant (_recipe)."""
    recipe = _recipe(setup)
    if done.get("plan") != plan or "dims" in done:  # "dims": a small dense model, trained from scratch
        return False
    legacy = {**LEGACY, **LEGACY_BY_TIER.get(done.get("tier", setup.tier), {})}
    if any(done.get(k, legacy.get(k)) != v for k, v in recipe.items() if k != "cooldown"):
        return False
    # One that never met the plateau rule trained every step either way; one it stopped counts only
    # where this setup stops by the same rule (a result without `cooldown` stopped at once, before
    # the cooldown existed).
    return done.get("stopped") != "plateau" or (
        recipe["cooldown"] is not None and done.get("cooldown") == recipe["cooldown"]
    )


def _record(out: Path, result: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1) + "\n"
    (out / "bench.json").write_text(text)
    kept = record_path(out)
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(text)
    return result


def record_path(out: Path) -> Path | None:
    """The committed copy of the bench.json of entrant folder `out` (entrant_dir), where `out` is
    in one of the benchmark's own folders (WORKS): RECORDS/<tier>/<row>/<entrant>.json."""
    for tier, work in WORKS.items():
        if out.parent.resolve() == work.resolve():  # WORK/dense
            return RECORDS / tier / f"{out.name}.json"
        if out.parent.parent.resolve() == work.resolve():  # WORK/<row>/<entrant>
            return RECORDS / tier / out.parent.name / f"{out.name}.json"
    return None


def run_small_dense(setup: Setup, row: Row) -> dict:
    from autoshrink.bench.entrants import small_dense

    out = entrant_dir(setup.tier_work, row.name, SMALL_DENSE)
    built = small_dense(setup, row)
    if built is None:
        return _unreachable(out, f"no smaller {setup.model_name} fits {row.ratio:g}x")
    model, plan, dim = built
    return train_entrant(setup, plan, out, f"{row.name} {SMALL_DENSE}", {"dims": dim}, model=model)


def run_autoshrink(setup: Setup, row: Row) -> dict:
    """`autoshrink search` as a user runs it (a subprocess, so its peak memory is its own), then
    final training of the front's best plan for the same steps as every other entrant."""
    from autoshrink.final.train import choose_trial

    out = entrant_dir(setup.tier_work, row.name, "autoshrink")
    run_dir = (
        entrant_dir(setup.work, row.name, "autoshrink") / "search"
    )  # the converged tier trains the quick tier's search
    cmd = [
        sys.executable,
        "-m",
        "autoshrink",
        "search",
        "--budget",
        f"{setup.max_bytes(row)}B",
        "--model",
        setup.model_name,
        "--data",
        setup.data,
        "--space",
        row.space,
        "--trials",
        str(setup.trials),
        "--finetune-steps",
        str(setup.finetune_steps),
        "--seed",
        str(setup.seed),
        "--run-dir",
        str(run_dir),
    ]
    record = run_dir.parent / "search.json"  # written once the search has finished: a resumed benchmark skips it
    if record.is_file():
        searched = json.loads(record.read_text())
    else:
        print("$", shlex.join(cmd), flush=True)
        search_commit, started = commit(), time.time()
        done = subprocess.run(cmd)
        if done.returncode == 2:
            return _unreachable(out, f"autoshrink search refused the budget (see {run_dir})")
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed with exit status {done.returncode}")
        searched = {
            "search_seconds": time.time() - started,
            # ru_maxrss of children: the largest search this process has run so far
            "search_peak_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
            "search_command": shlex.join(["autoshrink"] + cmd[3:]),
            "search_commit": search_commit,  # the subprocess imported the code of its own start
        }
        record.write_text(json.dumps(searched, indent=1) + "\n")
    number, plan_json = choose_trial(run_dir, "best")
    info = json.loads((run_dir / "run.json").read_text())
    return train_once(
        setup,
        row,
        plan_json,
        out,
        f"{row.name} autoshrink",
        {
            **searched,
            "trial": number,
            "trials": setup.trials,
            "finetune_steps": setup.finetune_steps,
            "search_dense_val_ppl": info.get("dense_val_ppl"),
        },
    )


def entrants_of(row: Row, tier: str = "quick") -> list[str]:
    small = [SMALL_DENSE] if row.roles is None else []
    if tier == "quick":
        return list(row.singles) + small + ["autoshrink"]
    return ["autoshrink", BEST_UNIFORM] + small  # autoshrink first: a best uniform plan it trained is not trained twice


def work_items(rows: list[str], tier: str = "quick") -> list[tuple[str, str]]:
    """(row, entrant) in the order they run: the dense control first, then row by row."""
    items = [("dense", "dense")]
    for name in rows:
        if tier == "quick" or name in CONVERGED_ROWS:
            items += [(name, e) for e in entrants_of(ROWS[name], tier)]
    return items


def run_item(setup: Setup, row_name: str, entrant: str) -> dict:
    if row_name == "dense":
        return run_dense(setup)
    row = ROWS[row_name]
    special = {"autoshrink": run_autoshrink, BEST_UNIFORM: run_best_uniform, SMALL_DENSE: run_small_dense}
    return special[entrant](setup, row) if entrant in special else run_single(setup, row, entrant)


def result_of(work: Path, row_name: str, entrant: str) -> dict | None:
    """An entrant's bench.json: in its folder, else its committed record (record_path), else None."""
    out = entrant_dir(work, row_name, entrant)
    for path in (out / "bench.json", record_path(out)):
        if path is not None and path.is_file():
            return json.loads(path.read_text())
    return None
