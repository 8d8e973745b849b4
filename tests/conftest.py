"""Shared test set-up: every test starts from the same random state."""

import matplotlib
import pyro
import pytest

# Figures are rendered off-screen in tests, as in CI.
matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _seed_and_clean_state():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
