"""Models: the reference LSTM LM, presets, pretraining, and the compressible sites of any model."""

from autoshrink.models.discover import all_sites, discover_sites

__all__ = ["all_sites", "discover_sites"]
