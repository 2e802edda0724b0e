"""Numerical solvers over plain arrays/tensors: no xarray, no Dask."""

from .sunsal import SunsalInfo, fcls, nnls, project_simplex, sunsal_solve, unconstrained_ls

__all__ = ["SunsalInfo", "fcls", "nnls", "project_simplex", "sunsal_solve", "unconstrained_ls"]
