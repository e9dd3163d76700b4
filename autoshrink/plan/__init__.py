"""Plans: {site: method config} parsed and applied to a model (apply), their exact stored bytes
(bytes), a method's size knob fitted to a byte target (fit), and repair of an over-budget plan
(repair)."""

from autoshrink.plan.apply import (
    Plan,
    compress,
    dense_weight,
    parse_plan,
    place_compressed,
    plan_to_json,
    resolve,
    untrained_perplexity,
)
from autoshrink.plan.bytes import (
    ModelFile,
    dense_bytes,
    method_bytes,
    plan_bytes_bound,
    plan_stored_bytes,
    stored_bytes,
)

__all__ = [
    "ModelFile",
    "Plan",
    "compress",
    "dense_bytes",
    "dense_weight",
    "method_bytes",
    "parse_plan",
    "place_compressed",
    "untrained_perplexity",
    "plan_bytes_bound",
    "plan_stored_bytes",
    "plan_to_json",
    "resolve",
    "stored_bytes",
]
