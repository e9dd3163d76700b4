from __future__ import annotations

import pytest

from autoshrink.search.budget import parse_budget
from autoshrink.errors import UserError


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("25x", "ratio", 25.0),
        ("1.5x", "ratio", 1.5),
        ("1.5MB", "bytes", 1_500_000),
        ("800KB", "bytes", 800_000),
        ("2MiB", "bytes", 2 * 2**20),
        ("4ms", "latency", 4.0),
        ("500us", "latency", 0.5),
        (" 10X ", "ratio", 10.0),
    ],
)
def test_valid_budgets(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, pytest.approx(value))


@pytest.mark.parametrize("text", ["abc", "0x", "-5MB", "25", "", "1x", "0ms", "5 parsecs", "x25"])
def test_malformed_budgets_are_user_errors_showing_the_value(text):
    with pytest.raises(UserError) as e:
        parse_budget(text)
    assert repr(text.strip()) in str(e.value) or repr(text) in str(e.value)


def test_max_bytes_of_ratio_and_size_budgets():
    assert parse_budget("25x").max_bytes(24_734_792) == 989_391
    assert parse_budget("1.5MB").max_bytes(10**9) == 1_500_000
    assert parse_budget("4ms").max_bytes(10**9) is None
