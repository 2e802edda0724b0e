"""SUnSAL (xr_unmix.solvers.sunsal) against independent oracles.

Oracles: FCLS by ``scipy.optimize.nnls`` on the sum-to-one augmented system and by exact enumeration of the
supports; NNLS by ``scipy.optimize.nnls``; LS by ``numpy.linalg.lstsq``; the l1 problem by its KKT conditions.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import nnls as scipy_nnls

from xr_unmix.errors import ConvergenceWarning
from xr_unmix.solvers.sunsal import fcls, nnls, project_simplex, sunsal_solve, unconstrained_ls


def _problem(seed: int, bands: int = 40, R: int = 4, n: int = 300, noise: float = 0.01,
             outside: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Well-conditioned random endmembers and noisy mixtures; ``outside`` pushes pixels off the simplex."""
    rng = np.random.default_rng(seed)
    E = rng.uniform(0.05, 0.9, (bands, R))
    A = rng.dirichlet(np.full(R, 0.7), n).T
    if outside:
        A = A + outside * rng.normal(size=A.shape)
    Y = E @ A + noise * rng.normal(size=(bands, n))
    return Y, E


def _fcls_nnls(Y: np.ndarray, E: np.ndarray, delta: float = 1e4) -> np.ndarray:
    """Per-pixel FCLS: NNLS on the system augmented with a heavily weighted row of ones."""
    Ea = np.vstack([E, delta * np.ones(E.shape[1])])
    return np.stack([scipy_nnls(Ea, np.append(y, delta))[0] for y in Y.T], 1)


def _fcls_enum(Y: np.ndarray, E: np.ndarray) -> np.ndarray:
    """Exact FCLS: the feasible equality-constrained LS solution of least objective over all supports."""
    R = E.shape[1]
    G, B = E.T @ E, E.T @ Y
    best = np.full(Y.shape[1], np.inf)
    out = np.zeros((R, Y.shape[1]))
    for k in range(1, R + 1):
        for S in map(list, itertools.combinations(range(R), k)):
            K = np.zeros((k + 1, k + 1))
            K[:k, :k], K[:k, k], K[k, :k] = G[np.ix_(S, S)], 1, 1
            xs = np.linalg.solve(K, np.vstack([B[S], np.ones((1, B.shape[1]))]))[:k]
            x = np.zeros_like(out)
            x[S] = xs
            f = 0.5 * np.einsum("in,in->n", x, G @ x) - np.einsum("in,in->n", B, x)
            ok = (xs >= -1e-12).all(0) & (f < best)
            best[ok], out[:, ok] = f[ok], x[:, ok]
    return out


def _rmse(a: torch.Tensor | np.ndarray, b: np.ndarray) -> float:
    a = a.double().numpy() if isinstance(a, torch.Tensor) else a
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fcls_matches_nnls_oracle_and_enumeration(seed: int) -> None:
    Y, E = _problem(seed, outside=0.15)
    ref = _fcls_nnls(Y, E)
    exact = _fcls_enum(Y, E)
    assert _rmse(ref, exact) < 1e-6  # the two oracles agree
    assert (exact == 0).any()  # some pixels have active constraints: the test is not trivial
    x32 = fcls(Y, E)
    x64 = fcls(Y, E, dtype="float64")
    assert x32.dtype == torch.float32 and x64.dtype == torch.float64
    assert _rmse(x32, ref) < 1e-4
    assert _rmse(x64, exact) < 1e-9
    # constraints hold on every pixel
    for x in (x32, x64):
        assert (x >= 0).all()
        assert torch.allclose(x.sum(0), torch.ones(x.shape[1], dtype=x.dtype), atol=1e-6)


def test_fcls_without_polishing_still_converges() -> None:
    Y, E = _problem(3, outside=0.1)
    x, info = sunsal_solve(Y, E, dtype="float64", polish=False, tol=1e-7, max_iter=20000, return_info=True)
    assert info.polished_fraction == 0 and info.converged_fraction == 1
    assert _rmse(x, _fcls_enum(Y, E)) < 1e-4
    assert (x >= 0).all() and torch.allclose(x.sum(0), torch.ones(x.shape[1], dtype=x.dtype))


def test_nnls_matches_scipy() -> None:
    Y, E = _problem(4, outside=0.3)
    ref = np.stack([scipy_nnls(E, y)[0] for y in Y.T], 1)
    assert (ref == 0).any()
    x = nnls(Y, E, dtype="float64")
    assert _rmse(x, ref) < 1e-8
    assert (x >= 0).all()
    assert _rmse(nnls(Y, E), ref) < 1e-4


def test_unconstrained_matches_lstsq() -> None:
    Y, E = _problem(5, outside=0.3)
    ref = np.linalg.lstsq(E, Y, rcond=None)[0]
    x = sunsal_solve(Y, E, anc=False, asc=False, dtype="float64")
    assert _rmse(x, ref) < 1e-8
    assert _rmse(unconstrained_ls(Y, E), ref) < 1e-10
    # ASC only: the sum-to-one constrained LS in closed form
    G, B = E.T @ E, E.T @ Y
    Gi1 = np.linalg.solve(G, np.ones(E.shape[1]))
    xls = np.linalg.solve(G, B)
    ref_asc = xls + np.outer(Gi1, (1 - xls.sum(0)) / Gi1.sum())
    x_asc = sunsal_solve(Y, E, anc=False, asc=True, dtype="float64")
    assert _rmse(x_asc, ref_asc) < 1e-8
    assert torch.allclose(x_asc.sum(0), torch.ones(x_asc.shape[1], dtype=torch.float64))


@pytest.mark.parametrize("anc", [True, False])
def test_l1_kkt_and_sparsity(anc: bool) -> None:
    Y, E = _problem(6, R=6, n=200, outside=0.2)
    G, B = E.T @ E, E.T @ Y
    lam = 0.5
    x = sunsal_solve(Y, E, lam=lam, anc=anc, asc=False, dtype="float64", normalize=True).numpy()
    x0 = sunsal_solve(Y, E, lam=0.0, anc=anc, asc=False, dtype="float64").numpy()
    assert (np.abs(x) < 1e-12).sum() > (np.abs(x0) < 1e-12).sum()  # sparser
    # KKT of min 1/2||y - Ex||^2 + lam ||x||_1 (+ x >= 0): g = Gx - b
    g = G @ x - B
    on = np.abs(x) > 1e-12
    np.testing.assert_allclose(np.where(on, g + lam * np.sign(x), 0), 0, atol=1e-7)
    if anc:
        assert (x >= 0).all()
        assert (np.where(on, 0, g + lam) >= -1e-7).all()
    else:
        assert (np.where(on, 0, np.abs(g) - lam) <= 1e-7).all()
    # same solution without polishing (plain ADMM to a tight tolerance)
    xa = sunsal_solve(Y, E, lam=lam, anc=anc, asc=False, dtype="float64", polish=False, tol=1e-9,
                      max_iter=50000).numpy()
    assert np.abs(xa - x).max() < 1e-5


def test_plain_admm_semantics() -> None:
    """normalize=False, adaptive_mu=False, tol=0, asc=False: exactly max_iter iterations of eq. (3)-(5)."""
    Y, E = _problem(7, R=3, n=20)
    lam, mu, K = 0.05, 0.7, 7
    IF = np.linalg.inv(E.T @ E + mu * np.eye(3))
    z = np.zeros((3, 20))
    d = np.zeros_like(z)
    for _ in range(K):
        x = IF @ (E.T @ Y + mu * (z + d))
        v = x - d
        z = np.maximum(np.sign(v) * np.maximum(np.abs(v) - lam / mu, 0), 0)
        d = d - (x - z)
    out, info = sunsal_solve(Y, E, lam=lam, anc=True, asc=False, mu=mu, max_iter=K, tol=0.0,
                             adaptive_mu=False, normalize=False, dtype="float64", return_info=True)
    assert info.iterations == K
    np.testing.assert_allclose(out.numpy(), z, atol=1e-12)


def test_pixel_result_independent_of_batch() -> None:
    """A pixel's answer does not depend on its batch companions (to float rounding: BLAS blocking
    differs with the batch size)."""
    Y, E = _problem(8, n=500, outside=0.2)
    for dtype, atol in (("float32", 1e-5), ("float64", 1e-10)):
        full = sunsal_solve(Y, E, dtype=dtype)
        parts = torch.cat([sunsal_solve(Y[:, i:i + 37], E, dtype=dtype) for i in range(0, 500, 37)], 1)
        small = sunsal_solve(Y, E, batch_pixels=64, dtype=dtype)
        shuffled = np.random.default_rng(0).permutation(500)
        perm = sunsal_solve(Y[:, shuffled], E, dtype=dtype)
        assert torch.allclose(full, parts, atol=atol)
        assert torch.allclose(full, small, atol=atol)
        assert torch.allclose(full[:, shuffled], perm, atol=atol)
    # same without polishing (per-pixel mu and stop)
    a = sunsal_solve(Y, E, polish=False, dtype="float64")
    b = torch.cat([sunsal_solve(Y[:, i:i + 50], E, polish=False, dtype="float64") for i in range(0, 500, 50)], 1)
    assert torch.allclose(a, b, atol=1e-10)


def test_non_convergence_warns() -> None:
    Y, E = _problem(9, outside=0.2)
    with pytest.warns(ConvergenceWarning, match="did not reach"):
        _, info = sunsal_solve(Y, E, max_iter=10, tol=1e-12, polish=False, return_info=True)
    assert info.converged_fraction < 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sunsal_solve(Y, E, max_iter=10, tol=1e-12, polish=False, warn=False)
        sunsal_solve(Y, E, max_iter=10, tol=0.0)


def test_bad_input() -> None:
    Y, E = _problem(10, n=5)
    bad = E.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sunsal_solve(Y, bad)
    with pytest.raises(ValueError, match="40 bands but E has 39"):
        sunsal_solve(Y, E[:-1])
    with pytest.raises(ValueError, match="lam"):
        sunsal_solve(Y, E, lam=-1.0)
    with pytest.raises(ValueError, match="mu"):
        sunsal_solve(Y, E, mu=0.0)
    with pytest.raises(ValueError, match="all zeros"):
        sunsal_solve(Y, np.zeros_like(E))
    with pytest.raises(ValueError, match="x0"):
        sunsal_solve(Y, E, x0=np.zeros((2, 5)))
    if not torch.cuda.is_available():
        from xr_unmix.errors import DeviceError

        with pytest.raises(DeviceError, match="no CUDA GPU"):
            sunsal_solve(Y, E, device="cuda")


def test_scale_invariance_and_integer_input() -> None:
    """Reflectance x 10000 as integers gives the same abundances (normalize=True)."""
    Y, E = _problem(11, n=100, noise=0.0)
    Yi = np.round(np.clip(Y, 0, None) * 10000).astype(np.uint16)
    a = fcls(Yi, E * 10000, dtype="float64")
    b = fcls(Yi / 10000.0, E, dtype="float64")
    assert torch.allclose(a, b, atol=1e-8)


def test_project_simplex() -> None:
    x = torch.tensor([[0.5, 0.5, 0.5], [2.0, -1.0, 0.0], [0.2, 0.3, 0.5]])
    p = project_simplex(x)
    assert torch.allclose(p.sum(-1), torch.ones(3))
    assert (p >= 0).all()
    assert torch.allclose(p[1], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(p[2], x[2])


@pytest.mark.parametrize(("anc", "asc", "lam"), [(False, True, 0.3), (True, True, 0.3), (True, False, 0.0),
                                                 (False, False, 0.2)])
def test_polished_equals_plain_admm(anc: bool, asc: bool, lam: float) -> None:
    """Polishing changes the cost, not the answer: it matches the reference ADMM run to a tight tol."""
    Y, E = _problem(12, R=5, n=120, outside=0.3)
    a, info = sunsal_solve(Y, E, lam=lam, anc=anc, asc=asc, dtype="float64", return_info=True)
    b = sunsal_solve(Y, E, lam=lam, anc=anc, asc=asc, dtype="float64", polish=False, tol=1e-10,
                     max_iter=100000)
    assert info.polished_fraction > 0.9
    assert float((a - b).abs().max()) < 1e-7
    if asc:
        assert torch.allclose(a.sum(0), torch.ones(a.shape[1], dtype=a.dtype))
    if anc:
        assert (a >= 0).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_pixels_come_out_nan(dtype: str) -> None:
    """A pixel with NaN/inf in any band is NaN in every output row; the others are as without it."""
    Y, E = _problem(13, n=200, outside=0.2)
    Yb = Y.astype(np.float32).copy()
    Yb[3, 5] = np.nan
    Yb[0, 17] = np.inf
    Yb[:, 40] = np.nan
    bad = np.zeros(200, bool)
    bad[[5, 17, 40]] = True
    x, info = sunsal_solve(Yb, E, dtype=dtype, return_info=True)
    ref = sunsal_solve(Yb[:, ~bad], E, dtype=dtype)
    assert torch.isnan(x[:, bad]).all() and not torch.isnan(x[:, ~bad]).any()
    # float32: the batch's shape changes the BLAS blocking, hence the roundoff (2.9e-6 measured on one
    # CPU, < 1e-6 on another); a pixel leaking into its neighbours would move them by far more
    assert torch.allclose(x[:, ~bad], ref, atol=1e-5 if dtype == "float32" else 1e-12)
    assert info.converged_fraction == 1.0
    allnan = sunsal_solve(np.full((40, 3), np.nan, np.float32), E, dtype=dtype)
    assert allnan.shape == (4, 3) and torch.isnan(allnan).all()
    # the same through torch input
    xt = sunsal_solve(torch.from_numpy(Yb), E, dtype=dtype)
    assert torch.isnan(xt[:, bad]).all() and torch.allclose(xt[:, ~bad], ref, atol=1e-5)


def test_polished_before_iterating() -> None:
    """FCLS pixels are mostly solved by the active-set polish before any ADMM iteration."""
    Y, E = _problem(14, n=2000, outside=0.1)
    x, info = sunsal_solve(Y, E, dtype="float64", return_info=True)
    assert info.polished_fraction > 0.95 and info.mean_iterations < 1.0
    assert _rmse(x, _fcls_enum(Y, E)) < 1e-9


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_unconstrained_ls_with_a_nan_endmember_column_is_a_clear_error(bad: float) -> None:
    # was: RuntimeError "false INTERNAL ASSERT FAILED ... torch.linalg.lstsq: Argument 4 has illegal value"
    Y, E = _problem(3, R=3, n=10)
    E[:, 1] = bad
    with pytest.raises(ValueError, match=r"endmember matrix contains NaN or inf \(in column\(s\) \[1\]\)"):
        unconstrained_ls(Y, E)


def test_unconstrained_ls_nan_pixel_comes_out_nan_and_leaves_the_others() -> None:
    Y, E = _problem(4, R=3, n=12)
    Y[:, 4] = np.nan
    out = unconstrained_ls(Y, E).numpy()
    assert np.isnan(out[:, 4]).all()
    keep = np.r_[0:4, 5:12]
    np.testing.assert_allclose(out[:, keep], np.linalg.lstsq(E, Y[:, keep], rcond=None)[0], atol=1e-10)


def test_accessor_ls_with_a_nan_endmember_column_is_a_clear_error() -> None:
    import xarray as xr

    import xr_unmix  # noqa: F401  (the accessor)

    Y, E = _problem(5, R=3, n=20)
    E[:, 2] = np.nan
    cube = xr.DataArray(Y.reshape(-1, 4, 5), dims=("band", "y", "x"))
    with pytest.raises(ValueError, match="endmembers contain 40 NaN/inf values"):
        cube.unmix.ls(E)


def _simplex_reference(v: np.ndarray) -> np.ndarray:
    """Duchi et al. (2008), one vector, float64."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    rho = np.nonzero(u - css / np.arange(1, v.size + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0)


@pytest.mark.parametrize("R", [1, 2, 5, 8, 9, 16, 17, 62])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_project_simplex_matches_the_sorted_reference_with_ties(R: int, dim: int) -> None:
    # R <= 16 runs the sorting network, larger R sorts: both against Duchi's algorithm, ties included
    rng = np.random.default_rng(R)
    x = rng.normal(size=(R, 7, 11)) * 2
    x[:, :3] = np.round(x[:, :3])  # many exact ties
    x[:, 0, 0] = 0.25  # all equal
    xm = np.moveaxis(x, 0, dim)
    out = project_simplex(torch.as_tensor(xm), dim=dim).numpy()
    ref = np.apply_along_axis(_simplex_reference, dim, xm)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.sum(dim), 1.0, atol=1e-12)
    assert (out >= 0).all()


@pytest.mark.parametrize("R", [1, 2, 3, 4, 5, 6, 7, 8, 12, 16])
def test_project_simplex_network_equals_the_sort_free_form(R: int) -> None:
    """The sorting network gives the sort-free form's projection (the one it replaced) in float32 to a
    few ulps: random states, exact ties, all equal, one-hot, far outside the simplex, already on it."""
    from xr_unmix.solvers.sunsal.simplex import project_simplex_sortfree

    g = torch.Generator().manual_seed(R)
    a = torch.rand(2, R, 9, 13, generator=g)
    x = torch.cat([a / a.sum(1, keepdim=True) - 0.1 * torch.randn(2, R, 9, 13, generator=g),  # DEQ-like
                   torch.round(4 * torch.randn(2, R, 9, 13, generator=g)) / 4,  # many ties
                   1e4 * torch.randn(1, R, 9, 13, generator=g), 1e-6 * torch.randn(1, R, 9, 13, generator=g)])
    x[0, :, 0, 0] = 0.3  # all equal
    x[0, :, 0, 1] = 0.0
    x[0, 0, 0, 1] = 1.0  # one-hot (on the simplex)
    x[0, :, 0, 2] = -5.0  # all far below
    for dim in (1, -3):
        new, old = project_simplex(x, dim=dim), project_simplex_sortfree(x, dim=dim)
        scale = x.abs().amax(1, keepdim=True).clamp_min(1.0)
        assert float(((new - old).abs() / scale).max()) <= 4 * torch.finfo(torch.float32).eps
        assert torch.allclose(new.sum(1), torch.ones(()), atol=1e-5) and bool((new >= 0).all())
    assert torch.equal(project_simplex(x[:1, :, 0, 1], dim=1), x[:1, :, 0, 1])  # on the simplex: unchanged
