"""Random streams: ``seeded`` gives the caller's state back, ``derive_seeds`` is a function
of its seed, and RNG states survive a round trip as plain data."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ppvae.inference.rng import derive_seeds, rng_state, seeded, set_rng_state


def _draws() -> tuple[float, float, float]:
    return torch.rand(()).item(), random.random(), float(np.random.random())  # noqa: NPY002


def test_seeded_restores_the_callers_state_and_seeds_the_block():
    state = rng_state()
    with seeded(3):
        inside = _draws()
    after = _draws()
    set_rng_state(state)
    assert _draws() == after  # the block left the caller's streams where they were
    with seeded(3):
        assert _draws() == inside  # the block's streams depend on the seed alone
    with seeded(4):
        assert _draws() != inside


def test_seeded_restores_after_an_error_and_when_nested():
    state = rng_state()
    with pytest.raises(RuntimeError), seeded(1):
        torch.rand(5)
        raise RuntimeError("boom")
    with seeded(1):
        first = torch.rand(()).item()
        with seeded(2):
            torch.rand(10)
        second = torch.rand(()).item()
    with seeded(1):
        assert [torch.rand(()).item(), torch.rand(()).item()] == [first, second]
    after = _draws()
    set_rng_state(state)
    assert _draws() == after


def test_seeded_none_draws_from_the_callers_stream():
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    with seeded(None):
        first = torch.rand(1)
    assert torch.equal(torch.cat([first, torch.rand(1)]), expected)


def test_derive_seeds_is_a_function_of_the_seed():
    assert derive_seeds(7, 3) == derive_seeds(7, 3)
    assert derive_seeds(7, 2) != derive_seeds(8, 2)
    a, b = derive_seeds(7, 2)
    assert a != b and all(0 <= s < 2**32 for s in (a, b))
    torch.manual_seed(0)
    unseeded = derive_seeds(None, 2)
    torch.manual_seed(0)
    assert derive_seeds(None, 2) == unseeded
