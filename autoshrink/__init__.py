"""autoshrink: AutoML compression of language models, searched per layer to a Pareto front."""
# The modules autoshrink/search, front, train and evaluate are loaded first, so that the names
# `search`, `front`, `train` and `evaluate` below are the API functions: a later import of
# autoshrink.<module> does not rebind them. (These modules import optuna/pandas lazily.)
import autoshrink.search  # noqa: F401
import autoshrink.front  # noqa: F401
import autoshrink.train  # noqa: F401
import autoshrink.evaluate  # noqa: F401
from autoshrink.api import compress, evaluate, front, load, pretrain, search, sites, stored_bytes, train
from autoshrink.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "compress", "evaluate", "front", "load", "pretrain", "search", "sites", "stored_bytes", "train",
           "__version__"]
