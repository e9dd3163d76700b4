"""Compression methods: one file per method, each registered by its config type.

Adding a method is one file and one import line below.
"""

from autoshrink.methods._base import (
    CompressedWeight,
    MethodConfig,
    config_class,
    config_from_dict,
    method_names,
    register,
    weight_class,
)
from autoshrink.methods._standins import CompressedEmbedding, CompressedLinear, CompressedStandIn
from autoshrink.methods._storage import (
    FLOAT_BITS,
    Specs,
    prefixed,
    safetensors_file_bytes,
    safetensors_header_bound,
    safetensors_header_bytes,
    specs_bytes,
    specs_of,
    tensors_bytes,
)

# One import per method: importing registers it.
from autoshrink.methods import quant  # noqa: E402,F401
from autoshrink.methods import prune  # noqa: E402,F401
from autoshrink.methods import kronecker  # noqa: E402,F401
from autoshrink.methods import groupreduce  # noqa: E402,F401
from autoshrink.methods import lowrank  # noqa: E402,F401
from autoshrink.methods import tt  # noqa: E402,F401
from autoshrink.methods import hash  # noqa: E402,F401
from autoshrink.methods import lightrnn  # noqa: E402,F401

__all__ = [
    "FLOAT_BITS",
    "CompressedEmbedding",
    "CompressedLinear",
    "CompressedStandIn",
    "CompressedWeight",
    "MethodConfig",
    "Specs",
    "config_class",
    "config_from_dict",
    "method_names",
    "prefixed",
    "register",
    "safetensors_file_bytes",
    "safetensors_header_bound",
    "safetensors_header_bytes",
    "specs_bytes",
    "specs_of",
    "tensors_bytes",
    "weight_class",
]
