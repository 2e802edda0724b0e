"""Large libraries (R = 62, cond(E^T E) = 3e7): the active-set path certifies every pixel in bounded steps."""

from __future__ import annotations

import numpy as np
import pytest

from xr_unmix.endmembers import resample_spectra
from xr_unmix.library import load_library
from xr_unmix.solvers.sunsal import sunsal_solve


@pytest.fixture(scope="module")
def problem() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        usgs = load_library("usgs")
    except FileNotFoundError as exc:  # ../shared/data (or $XR_UNMIX_DATA) is not on this machine
        pytest.skip(f"USGS library not available: {exc}")
    E = resample_spectra(usgs, np.linspace(400, 2450, 120)).values  # (120, 62)
    rng = np.random.default_rng(5)
    n, R = 300, E.shape[1]
    A = np.zeros((R, n))
    for i in range(n):
        k = int(rng.integers(2, 6))
        A[rng.choice(R, k, replace=False), i] = rng.dirichlet(np.ones(k))
    clean = E @ A
    Y = clean + rng.normal(0, 0.01 * clean.std(), clean.shape)
    return E, Y.astype(np.float32), A


def _kkt(X: np.ndarray, Y: np.ndarray, E: np.ndarray, lam: float, asc: bool) -> float:
    """Largest KKT violation, computed here independently of the solver (float64)."""
    g = E.T @ (E @ X - Y.astype(np.float64)) + lam
    on = X > 0
    nu = -(g * on).sum(0) / np.maximum(on.sum(0), 1) if asc else 0.0
    gn = g + nu
    return float(max(np.abs(gn * on).max(), np.maximum(-(gn * ~on), 0).max()))


@pytest.mark.parametrize("asc", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_library_pixels_all_certified_in_bounded_steps(problem, asc: bool, dtype: str) -> None:
    E, Y, A = problem
    lam = 1e-3
    X, info = sunsal_solve(Y, E, lam=lam, asc=asc, dtype=dtype, return_info=True)
    X = X.double().numpy()
    assert info.converged_fraction == 1.0 and info.polished_fraction == 1.0
    assert info.iterations <= 3 * E.shape[1] + 10  # steps, not ADMM's 1000 iterations
    assert X.min() >= 0
    if asc:
        assert np.abs(X.sum(0) - 1).max() <= (2e-7 if dtype == "float32" else 1e-12)
    # exact up to the output's rounding: the KKT conditions of the float64 problem hold
    assert _kkt(X, Y, E, lam, asc) <= (1e-4 if dtype == "float32" else 1e-8)
    assert np.sqrt(np.mean((X - A) ** 2)) < 0.05


def test_library_answer_matches_admm_where_admm_converges() -> None:
    # a well-conditioned R = 16 problem (past the table polisher's limit): the active-set answer equals
    # a long plain ADMM run (no polishing) on the same problem
    rng = np.random.default_rng(2)
    E = rng.uniform(0.05, 1.0, (40, 16))
    A = rng.dirichlet(np.full(16, 0.3), 200).T
    Y = E @ A + rng.normal(0, 0.002, (40, 200))
    X = sunsal_solve(Y, E, lam=1e-3, asc=False, dtype="float64").numpy()
    Z = sunsal_solve(Y, E, lam=1e-3, asc=False, dtype="float64", polish=False, tol=1e-9,
                     max_iter=20000, warn=False).numpy()
    np.testing.assert_allclose(X, Z, atol=2e-4)


def test_library_nan_pixels_and_warm_start(problem) -> None:
    E, Y, _ = problem
    Y = Y.copy()
    Y[3, 7] = np.nan
    X = sunsal_solve(Y, E, lam=1e-3).numpy()
    assert np.isnan(X[:, 7]).all() and np.isfinite(np.delete(X, 7, 1)).all()
    X2 = sunsal_solve(Y, E, lam=1e-3, x0=np.nan_to_num(X, nan=1.0 / E.shape[1])).numpy()
    np.testing.assert_allclose(np.delete(X2, 7, 1), np.delete(X, 7, 1), atol=1e-5)


def test_split_over_two_threads_gives_the_same_answer(problem) -> None:
    # a call on the main thread with 2 torch threads is split into one batch per thread (one batch alone
    # ran on torch's intra-op threads, 10x slower under load); each pixel is counted once
    import torch

    E, Y, _ = problem
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, i1 = sunsal_solve(Y, E, lam=1e-3, asc=False, return_info=True)
        torch.set_num_threads(2)
        two, i2 = sunsal_solve(Y, E, lam=1e-3, asc=False, return_info=True)
    finally:
        torch.set_num_threads(prev)
    assert i1.polished_fraction == i2.polished_fraction == 1.0
    assert i2.mean_iterations == pytest.approx(i1.mean_iterations)
    np.testing.assert_allclose(two.numpy(), one.numpy(), rtol=0, atol=1e-6)
