"""Shared fixtures: everything is seeded, float64 where a test compares against exact math."""

import os

import matplotlib
import pyro
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same global RNG state and a clean Pyro param store."""
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
