"""Models: the reference LSTM LM, presets, pretraining, and the compressible sites of any model."""
from autoshrink.models.discover import discover_sites

__all__ = ["discover_sites"]
