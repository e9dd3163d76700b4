"""The search pipeline before any training: a run of `autoshrink search` with --finetune-steps 0,
reported as a table of its trials by origin (allocated, uniform control, sampled).

    autoshrink search --budget 25x --trials 6 --finetune-steps 0 --run-dir results/runs/pipeline-25x-notrain
    autoshrink train results/runs/pipeline-25x-notrain --trial N --steps 200 --evals 4 \
        --out results/runs/pipeline-25x-notrain/final-N          # for the trials to compare after training
    python -m autoshrink.bench.pipeline results/runs/pipeline-25x-notrain --out results/pipeline.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autoshrink.bench.report import commit, write_report
from autoshrink.search import run_folder
from autoshrink.search.study import load_study, origin_of


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder of a search with --finetune-steps 0")
    p.add_argument("--out", default="results/pipeline.md")
    args = p.parse_args(argv)
    record = run_folder.read(args.run_dir)
    study = load_study(args.run_dir)
    origin = {t.number: origin_of(t) for t in study.get_trials()}
    dense = record.info["dense_val_ppl"]
    rows = [
        "| trial | origin | stored bytes | ratio | val ppl | vs dense | plan |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    trained = record.trials[record.trials["state"] == "COMPLETE"]
    for r in trained.itertuples():
        plan = json.loads(r.plan)
        knobs = "; ".join(
            f"{s}: {c['method']} "
            + " ".join(
                f"{k}={c[k]:.3g}" if isinstance(c[k], float) else f"{k}={c[k]}"
                for k in ("rank", "blocks", "density")
                if k in c
            )
            + f" {c.get('bits', 32)}b"
            for s, c in plan.items()
        )
        rows.append(
            f"| {r.number} | {origin[r.number]} | {int(r.stored_bytes):,} | {r.ratio:.1f}x | {r.val_ppl:.2f} | "
            f"{100 * (r.val_ppl / dense - 1):+.1f}% | {knobs} |"
        )
    best_alloc = trained[[origin[n].startswith(("allocation", "knapsack")) for n in trained["number"]]]
    best_uniform = trained[[origin[n].startswith("uniform") for n in trained["number"]]]
    lines = [
        "# The search pipeline before any training",
        "",
        f"Commit {commit()}; run folder `{args.run_dir}`; command: `{record.info.get('command')}`. "
        f"Validation perplexity on the first {record.info.get('eval_tokens', 12000):,} validation tokens, "
        f"no fine-tuning (dense {dense:.2f}). The allocation chose on held-out validation tokens after those.",
        "",
        *rows,
    ]
    if not best_alloc.empty and not best_uniform.empty:
        a, u = best_alloc["val_ppl"].min(), best_uniform["val_ppl"].min()
        verdict = "beats" if a < u else "does not beat"
        lines += [
            "",
            f"The best allocated plan ({a:.2f}, {100 * (a / dense - 1):+.1f}%) {verdict} the best uniform "
            f"control ({u:.2f}, {100 * (u / dense - 1):+.1f}%) at equal (zero) training.",
        ]
    lines += _after_training(Path(args.run_dir), origin)
    write_report(Path(args.out), "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


def _after_training(run_dir: Path, origin: dict) -> list[str]:
    """Rows for the trials given the same final training (RUN/final-<n>/metrics.json)."""
    done = sorted(run_dir.glob("final-*/metrics.json"))
    if not done:
        return []
    rows = [
        "",
        "After final training (`autoshrink train RUN --trial N --steps CAP [--lr] [--schedule]`, distilled; the "
        "schedule spans the step cap, and training stops after 3 validations without improvement; rows trained "
        "before the cap was recorded show -); val ppl over the whole validation split, test ppl over the whole "
        "test split; the file's size on disk, header included:",
        "",
        "| trial | origin | step cap | lr, schedule | steps trained | val ppl | test ppl | model.safetensors bytes |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for path in done:
        m = json.loads(path.read_text())
        n = int(m["trial"])
        recipe = f"{m['lr']:g}, {m['schedule']}" if "lr" in m else "the default then (0.002, cosine)"
        rows.append(
            f"| {n} | {origin.get(n, '?')} | {m.get('steps_cap', '-')} | {recipe} | {m['steps']} | {m['val_ppl']:.2f} | "
            f"{m['test_ppl']:.2f} | {(path.parent / 'model.safetensors').stat().st_size:,} |"  # the file, whichever code counted
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
