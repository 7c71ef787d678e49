"""Numba backend (imported as ``gradbench.kernels``)."""
