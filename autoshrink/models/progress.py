"""Progress of a training run, fed by train_lm's records (step, steps, loss, tokens_per_s, eta_s).

On a terminal it is a tqdm bar on stderr; elsewhere (a log file, CI, a notebook's captured
stderr) it is quiet except for one line every `every_s` seconds and one at the end, so a long
wait never looks like a hang and a log never fills with bar redraws. Pretraining on first use,
each trial of a search and final training all use it.
"""

from __future__ import annotations

import sys
import time
from typing import Callable


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min: for ETAs and expected durations."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class TrainingProgress:
    """Call it with each record of train_lm's `on_log`; `close()` when the run ends. `note(text)`
    adds a remark (a validation) to the bar and the next line."""

    def __init__(
        self,
        desc: str,
        log: Callable[[str], None] | None = None,
        every_s: float = 30.0,
        bar: bool | None = None,
        leave: bool = False,
    ):
        self.desc, self.log, self.every_s, self.leave = desc, log or _stderr, every_s, leave
        self.use_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None
        self.last_line = time.monotonic()
        self.record: dict | None = None
        self.remark = ""

    def __call__(self, record: dict) -> None:
        self.record = record
        if self.use_bar:
            self._draw(record)
        elif record["step"] >= record["steps"] or time.monotonic() - self.last_line >= self.every_s:
            self.log(self.line(record))
            self.last_line = time.monotonic()

    def note(self, text: str) -> None:
        self.remark = text
        if self.bar is not None:
            self.bar.set_postfix_str(self._postfix(self.record), refresh=False)

    def line(self, record: dict) -> str:
        return (
            f"{self.desc}: step {record['step']}/{record['steps']}, {self._postfix(record)}, "
            f"ETA {duration(record.get('eta_s', 0.0))}"
        )

    def _postfix(self, record: dict | None) -> str:
        parts = [] if record is None else [f"loss {record['loss']:.3f}", f"{record['tokens_per_s']:,.0f} tokens/s"]
        return ", ".join(parts + ([self.remark] if self.remark else []))

    def _draw(self, record: dict) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=record["steps"],
                desc=self.desc,
                unit="step",
                file=sys.stderr,
                mininterval=1.0,
                leave=self.leave,
                dynamic_ncols=True,
            )
        self.bar.update(record["step"] - self.bar.n)
        self.bar.set_postfix_str(self._postfix(record), refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
