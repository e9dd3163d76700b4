"""autoshrink: AutoML compression of language models, searched per layer to a Pareto front.

    import autoshrink
    from autoshrink.api import front, search
    result = search(autoshrink.SearchConfig(budget="25x"))
    final = autoshrink.train(result.run_dir)

`autoshrink.search` and `autoshrink.front` are the packages of those steps, so their API
functions live in `autoshrink.api` (a function of the same name here would shadow the package).
"""

from autoshrink.api import adapt, compress, evaluate, load, pretrain, profile, profile_text, sites, stored_bytes, train
from autoshrink.errors import UserError
from autoshrink.final.config import TrainConfig
from autoshrink.search.config import SearchConfig

__version__ = "0.1.0"
__all__ = [
    "SearchConfig",
    "TrainConfig",
    "UserError",
    "adapt",
    "compress",
    "evaluate",
    "load",
    "pretrain",
    "profile",
    "profile_text",
    "sites",
    "stored_bytes",
    "train",
    "__version__",
]
