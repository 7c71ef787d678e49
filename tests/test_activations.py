"""The activations of the reference (gradbench.activations): closed forms checked independently."""

from __future__ import annotations

import numpy as np
import pytest

import gradbench as gb
from gradbench import abi
from gradbench.activations import dphi, dphi_max


@pytest.mark.parametrize("name", gb.ACTIVATIONS)
def test_dphi_max_closed_forms_equal_a_fine_scan(name):
    """max phi' in closed form (gelu: at z = sqrt 2; swish: at the root of z tanh(z/2) = 2)
    against the maximum of the reference's phi' on a grid of 1.2 million points."""
    param = gb.Stack(depth=1, width=1, activation=name).act_param
    z = np.union1d(np.linspace(-6.0, 6.0, 1_200_001), [0.0])  # the kink of ELU/SELU too
    scan = float(dphi(z, abi.ACT_CODE[name], param).max())
    got = dphi_max(name, param)
    assert got >= scan * (1 - 1e-15), (name, got, scan)
    assert got - scan <= 1e-10 * abs(scan), (name, got, scan)  # a grid step of 1e-5 misses the peak by O(1e-10)
