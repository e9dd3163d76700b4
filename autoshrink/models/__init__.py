"""Models: the reference LSTM LM, presets, and the compressible sites of any model."""
from autoshrink.models.sites import ROLES, Site, discover_sites

__all__ = ["ROLES", "Site", "discover_sites"]
