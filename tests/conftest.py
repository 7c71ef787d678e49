import os

import numpy as np
import pytest

# Matplotlib never opens a window in tests.
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
