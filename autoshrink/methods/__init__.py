"""Compression methods: one file per method, each registered by its config type.

Adding a method is one file and one import line below.
"""
from autoshrink.methods._base import (CompressedEmbedding, CompressedLinear, CompressedWeight, MethodConfig,
                                      config_class, config_from_dict, method_names, register, weight_class)

# One import per method: importing registers it.
from autoshrink.methods import quant  # noqa: E402,F401

__all__ = ["CompressedEmbedding", "CompressedLinear", "CompressedWeight", "MethodConfig", "config_class",
           "config_from_dict", "method_names", "register", "weight_class"]
