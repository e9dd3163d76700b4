"""What every command of the CLI shares in how it shows things: the --help layout, byte sizes,
measured spreads and the training progress bar."""

from __future__ import annotations

import argparse

from autoshrink.measure.timing import Spread
from autoshrink.models.progress import TrainingProgress


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written; every flag's help ends with its default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
        ):
            return text
        return text + " [%(default)s]"


def spread(metrics: dict, key: str, unit: str, digits: int) -> str:
    """ "3.52 ms (median of 20, IQR 3.41-3.70)" from metrics that record a spread (measure/timing.py)."""
    if f"{key}_iqr" not in metrics:  # an older metrics.json: the median alone
        return f"{metrics[key]:,.{digits}f} {unit}"
    return Spread(metrics[key], *metrics[f"{key}_iqr"], metrics[f"{key}_repeats"]).describe(unit, digits)


def fmt_bytes(n: float) -> str:
    """ "1.52 MB", "3.10 KB" or "512 B"."""
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def progress_bar(desc: str) -> TrainingProgress:
    """A bar on a terminal, a line every 30 s otherwise (models/progress.py), kept when done."""
    return TrainingProgress(desc, leave=True)
