"""autoshrink: AutoML compression of language models, searched per layer to a Pareto front."""
from autoshrink.api import compress, load, pretrain, sites, stored_bytes
from autoshrink.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "compress", "load", "pretrain", "sites", "stored_bytes", "__version__"]
