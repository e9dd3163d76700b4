"""The default torch thread count: one on small machines, the user's choice respected."""

from __future__ import annotations

import pytest
import torch

from autoshrink import threads


@pytest.fixture()
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "cores,load,expected",
    [
        (1, 0.0, 1),
        (2, 0.0, 1),
        (2, 5.0, 1),
        (4, 0.2, 1),  # small machines: one thread, busy or not
        (16, 0.0, 16),
        (16, 5.4, 11),
        (16, 40.0, 1),  # larger ones leave the busy cores alone
        (64, 0.0, 32),  # never more than torch's own default
    ],
)
def test_choose_threads(cores, load, expected):
    assert threads.choose_threads(cores, load, torch_default=min(cores, 32)) == expected


def test_a_users_choice_is_left_alone(restore_threads):
    torch.set_num_threads(2)
    for name in threads.USER_VARIABLES:
        assert threads.set_default_threads({name: "2"}) is None
        assert torch.get_num_threads() == 2


def test_without_a_choice_the_default_is_set(restore_threads, monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    torch.set_num_threads(2)
    assert threads.set_default_threads({}) == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "load_average", lambda: 3.0)
    torch.set_num_threads(8)  # torch's default on 8 cores
    assert threads.set_default_threads({"OMP_NUM_THREADS": ""}) == 5  # an empty variable is no choice
    assert torch.get_num_threads() == 5
