"""Progress everywhere a user waits: inside each trial, on first-use pretraining, in the search's lines."""

from __future__ import annotations


from autoshrink.models.pretrain import pretrained
from autoshrink.models.progress import TrainingProgress, duration
from test_search import SPACE, _search


def _record(step, steps=80, loss=4.5):
    return {"step": step, "steps": steps, "loss": loss, "tokens_per_s": 1234.0, "eta_s": 2.0 * (steps - step)}


def test_off_a_terminal_progress_is_a_periodic_line_and_one_at_the_end():
    lines = []
    quiet = TrainingProgress("trial #3", log=lines.append, every_s=3600, bar=False)
    for step in range(4, 81, 4):
        quiet(_record(step))
    # only the end: the interval never passed
    assert lines == ["trial #3: step 80/80, loss 4.500, 1,234 tokens/s, ETA 0 s"]
    lines.clear()
    chatty = TrainingProgress("trial #3", log=lines.append, every_s=0, bar=False)
    chatty(_record(20))
    chatty.note("val ppl 61.20 at step 20")
    chatty(_record(40))
    assert lines[0] == "trial #3: step 20/80, loss 4.500, 1,234 tokens/s, ETA 2 min 00 s"
    assert lines[1].endswith("val ppl 61.20 at step 20, ETA 1 min 20 s")


def test_durations_read_as_a_person_would_say_them():
    assert [duration(s) for s in (0.4, 59, 61, 3600 + 120)] == ["0 s", "59 s", "1 min 01 s", "1 h 02 min"]


def test_first_use_pretraining_is_announced_with_its_progress(text_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AUTOSHRINK_CACHE", str(tmp_path / "cache"))  # a first use, whatever ran before
    pretrained("kjv-lstm-tiny", str(text_file))
    err = capsys.readouterr().err
    assert "is not in the cache yet: pretraining it once" in err
    assert "pretraining kjv-lstm-tiny: step" in err  # off a terminal: the closing line of its progress
    pretrained("kjv-lstm-tiny", str(text_file))
    assert capsys.readouterr().err == ""  # cached: nothing to say


def test_search_lines_name_the_validation_slice_and_optunas_states(tiny_model_dir, text_file, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    lines = []
    result = _search(
        tiny_model_dir,
        text_file,
        tmp_path / "space.yaml",
        tmp_path / "run",
        log=lines.append,
        trials=2,
        finetune_steps=4,
    )
    assert any("val ppl: first 12,000 valid tokens (dense model: " in line for line in lines)
    trial_lines = [line for line in lines if line.startswith("trial ") and "/2 #" in line]
    states = {t.number: t.state.name for t in result.study.get_trials()}
    assert len(trial_lines) == 2
    for line in trial_lines:
        number = int(line.split("#")[1].split()[0])
        assert line.split()[3] == states[number] and " ok " not in line  # as trials.csv says it
    assert any(line.startswith("trial #0: step 4/4") for line in lines)  # the trial's own progress, at its end
