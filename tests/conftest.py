"""Shared test set-up: every test starts from the same random state, on one thread."""

import matplotlib
import pyro
import pytest
import torch
from threadpoolctl import threadpool_limits

# Figures are rendered off-screen in tests, as in CI.
matplotlib.use("Agg")

# The tensors in tests are small: a second intra-op thread only adds start-up and
# synchronisation costs, and on a shared 2-core machine makes steps up to ten times slower.
torch.set_num_threads(1)
threadpool_limits(1)  # the same for NumPy's BLAS and scikit-learn (t-SNE)


@pytest.fixture(autouse=True)
def _seed_and_clean_state():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Run a test in double precision (estimators compared with exact answers)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
