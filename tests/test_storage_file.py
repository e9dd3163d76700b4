"""The budget bounds the file: the safetensors header size follows from names, dtypes and shapes."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from autoshrink.methods._storage import (
    SAFETENSORS_DTYPES,
    safetensors_file_bytes,
    safetensors_header_bound,
    safetensors_header_bytes,
    specs_of,
    tensors_bytes,
)

CASES = [
    ({"w": torch.zeros(3, 4)}, None),
    (
        {
            "decoder.b0.U.codes": torch.zeros(17, dtype=torch.uint8),
            "decoder.b0.U.scale": torch.zeros(9, dtype=torch.float16),
            "rnn.0.ih.bias": torch.zeros(1024),
            "encoder.perm": torch.zeros(5, dtype=torch.int16),
            "z": torch.zeros(0),
        },
        {"format": "autoshrink-compressed/1"},
    ),
    (
        {name: torch.zeros(2, 3, dtype=dtype) for name, dtype in zip("abcdefghijklm", SAFETENSORS_DTYPES)},
        {"k": "v", "x": "é"},
    ),
    ({f"t{i}": torch.zeros(i + 1, 7) for i in range(40)}, {"format": "x"}),  # offsets of growing width
]


@pytest.mark.parametrize("tensors,metadata", CASES)
def test_file_size_is_known_before_writing(tmp_path, tensors, metadata):
    path = tmp_path / "m.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    assert safetensors_file_bytes(tensors, metadata) == os.path.getsize(path)
    specs = {k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}
    assert safetensors_header_bytes(specs, metadata) % 8 == 0


def test_header_grows_with_names():
    small = safetensors_header_bytes({"a": (torch.float32, (4,))})
    large = safetensors_header_bytes({"a_much_longer_tensor_name_here": (torch.float32, (4,))})
    assert large > small >= 8 + 40


@pytest.mark.parametrize("tensors,metadata", CASES)
def test_the_additive_header_bound_is_never_below_the_header(tensors, metadata):
    specs = specs_of(tensors)
    digits = len(str(tensors_bytes(tensors)))  # every offset has at most this many digits
    bound = safetensors_header_bound(specs, metadata, digits)
    assert safetensors_header_bytes(specs, metadata) <= bound
    # a sum over tensors: adding one adds the same whatever else the file holds
    extra = {"zz.added": (torch.float16, (3, 5))}
    with_extra = safetensors_header_bound({**specs, **extra}, metadata, digits)
    assert with_extra - bound == safetensors_header_bound(extra, None, digits) - safetensors_header_bound(
        {}, None, digits
    )
