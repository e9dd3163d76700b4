"""autoshrink: AutoML compression of language models, searched per layer to a Pareto front."""
# The subpackage autoshrink/search is loaded first, so that the name `search` below is the API
# function: a later import of autoshrink.search.<x> does not rebind it.
import autoshrink.search  # noqa: F401
from autoshrink.api import compress, load, pretrain, search, sites, stored_bytes
from autoshrink.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "compress", "load", "pretrain", "search", "sites", "stored_bytes", "__version__"]
