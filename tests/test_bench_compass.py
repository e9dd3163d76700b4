"""bench/compass: final trainings of a row's plan with one thing changed, against the converged tier's dense control and entrant."""

from __future__ import annotations

import json

from autoshrink.bench import compass
from autoshrink.bench.reference import entrant_dir

PLAN = {"rnn.0.ih": {"method": "lowrank", "rank": 8}}


def _entrant(work, row, entrant, test_ppl, plan):
    out = entrant_dir(work, row, entrant)
    out.mkdir(parents=True)
    result = {"test_ppl": test_ppl, "val_ppl": test_ppl + 0.5, "steps": 300, "stopped": "steps", "plan": plan}
    (out / "bench.json").write_text(json.dumps({**result, "lr": 5e-4, "commit": "abc1234"}))


def _final(folder, test_ppl, plan=PLAN, distill=True, weight=0.5):
    folder.mkdir(parents=True)
    metrics = {
        "test_ppl": test_ppl,
        "val_ppl": test_ppl + 0.2,
        "steps": 550,
        "steps_cap": 600,
        "stopped": "plateau",
        "distill": distill,
        "distill_weight": weight if distill else 0.0,
        "lr": 5e-4,
        "commits": ["def5678", "def5678"],
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "plan.json").write_text(json.dumps(plan))
    return folder


def test_each_training_is_held_against_the_dense_control_and_the_compass_from_the_measured_figures(tmp_path):
    work = tmp_path / "converged"
    _entrant(work, "dense", "dense", 40.0, {})
    _entrant(work, "25x", "autoshrink", 40.6, PLAN)
    close = _final(tmp_path / "six", 40.3)  # +0.75%: within 1%
    far = _final(tmp_path / "other", 40.5, plan={"rnn.0.ih": {"method": "lowrank", "rank": 4}}, distill=False)
    kl = _final(tmp_path / "kl", 40.45, weight=1.0)
    text = compass.markdown("25x", [close, far, kl], "cmd", work=work)
    assert "| 25x autoshrink entrant (3 epochs) | - | 300 (steps) | 41.10 | 40.60 | +1.5% | abc1234 |" in text
    assert f"| `{close}` | 600 | 550 (plateau) | 40.50 | 40.30 | +0.7% | def5678 |" in text
    assert (
        f"- `{close}` (the entrant's plan and recipe, its own cap): test 40.30 against the entrant's 40.60 (-0.30); "
        "+0.7% over the dense control: within 1% (the compass's goal at 25x): **yes**" in text
    )
    assert f"| `{far}` (another plan, not distilled) |" in text  # no test of the cap alone
    assert f"- `{far}`: test 40.50 against the entrant's 40.60 (-0.10); +1.2% over the dense control" in text
    assert f"| `{kl}` (distillation weight 1) |" in text
    assert text.rstrip().endswith("+1.1% over the dense control: within 1% (the compass's goal at 25x): **no**")


def test_a_folder_that_is_no_training_export_exits_2_with_one_line(tmp_path, capsys):
    work = tmp_path / "converged"
    _entrant(work, "dense", "dense", 40.0, {})
    _entrant(work, "25x", "autoshrink", 40.6, PLAN)
    code = compass.main([str(tmp_path / "nothing"), "--work", str(work), "--out", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not an `autoshrink train` export" in err
    assert not (tmp_path / "r.md").exists()
