"""SUnSAL: ADMM for constrained sparse regression (Bioucas-Dias & Figueiredo, 2010).

Solves, for every pixel ``y`` (a column of ``Y``) at once::

    min_x  1/2 ||y - E x||^2 + lam ||x||_1   s.t.  x >= 0 (ANC, optional),  1^T x = 1 (ASC, optional)

with the splitting ``x = z`` and the scaled dual ``d``::

    x <- (E^T E + mu I)^-1 (E^T y + mu (z + d))      [+ affine correction onto 1^T x = 1 under ASC]
    z <- max(soft(x - d, lam / mu), 0)                [no clamp without ANC]
    d <- d - (x - z)

Implementation notes
--------------------
- One eigendecomposition ``E^T E = V diag(s) V^T`` per call replaces the ``(E^T E + mu I)^-1`` factor, so
  ``mu`` can differ per pixel at the cost of two ``R x R`` products per pixel and iteration.
- Every pixel runs its own ADMM: its own residuals, its own adaptive ``mu`` (x2 / /2 every 10 iterations
  when the primal and dual residuals differ by more than 10x, as in the reference code) and its own stop.
  A pixel's result therefore does not depend on which other pixels share its block: tiled and untiled
  runs agree.
- Pixels are processed in batches of ``batch_pixels`` so the working set stays in cache.
- With ``normalize=True`` (default) the problem is rescaled by the spectral norm of ``E`` first
  (``lam`` scaled accordingly), which makes the default ``mu`` sensible whatever the reflectance scale.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConvergenceWarning

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class SunsalInfo:
    """Diagnostics of one :func:`sunsal_solve` call."""

    iterations: int  #: the most iterations any pixel used
    converged_fraction: float  #: fraction of pixels that met the tolerance
    max_primal_residual: float  #: largest final per-pixel ``||x - z||`` (normalized units)


def _as_tensor(a: ArrayLike, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)


def project_simplex(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection onto the probability simplex along ``dim`` (Duchi et al., 2008).

    Parameters
    ----------
    x : Tensor, any shape
    dim : int
        Axis holding the abundances.

    Returns
    -------
    Tensor, same shape, non-negative and summing to one along ``dim``.
    """
    x = x.movedim(dim, -1)
    r = x.shape[-1]
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    k = torch.arange(1, r + 1, device=x.device, dtype=x.dtype)
    cond = u - css / k > 0
    rho = cond.to(torch.int64).cumsum(-1).argmax(-1, keepdim=True)  # last True index
    tau = css.gather(-1, rho) / (rho + 1).to(x.dtype)
    return (x - tau).clamp_min(0).movedim(-1, dim)


def sunsal_solve(
    Y: ArrayLike,
    E: ArrayLike,
    *,
    lam: float = 0.0,
    anc: bool = True,
    asc: bool = True,
    mu: float | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    adaptive_mu: bool = True,
    normalize: bool = True,
    x0: ArrayLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    batch_pixels: int = 16384,
    return_info: bool = False,
    warn: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, SunsalInfo]:
    """Run SUnSAL on many pixels at once.

    Parameters
    ----------
    Y : array or Tensor, shape (bands, n_pixels)
        Spectra, one pixel per column; finite.
    E : array or Tensor, shape (bands, R)
        Endmember matrix; finite, full column rank unless ``mu > 0`` keeps the system regular.
    lam : float
        l1 weight (``lam >= 0``), in the units of the original problem.
    anc, asc : bool
        Enforce non-negativity / sum-to-one.
    mu : float, optional
        ADMM penalty. Default 0.01 on the normalized problem (as the reference code).
    max_iter : int
        Iteration limit per pixel.
    tol : float
        Per-pixel tolerance on the primal ``||x - z||`` and dual ``mu ||z - z_prev||`` residuals, scaled
        by ``sqrt(R)``. ``tol=0`` runs exactly ``max_iter`` iterations.
    adaptive_mu : bool
        Rebalance ``mu`` per pixel every 10 iterations (reference behaviour).
    normalize : bool
        Rescale the problem by ``||E||_2`` first (see module notes). ``False`` uses ``mu`` and ``lam`` as given.
    x0 : array, shape (R, n_pixels), optional
        Start for ``z`` (default 0, with ``d = 0``).
    device, dtype
        Where and in which precision to compute (``"cuda"`` works when torch sees a GPU).
    batch_pixels : int
        Pixels per inner batch.
    return_info : bool
        Also return a :class:`SunsalInfo`.
    warn : bool
        Emit a :class:`~xr_unmix.errors.ConvergenceWarning` if some pixels hit ``max_iter`` (with ``tol > 0``).

    Returns
    -------
    Tensor, shape (R, n_pixels)
        Abundances (the split variable ``z`` when ANC is on, so ``>= 0`` holds exactly; projected onto the
        simplex when ANC and ASC are both on, so both hold exactly).
    """
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    Yt = _as_tensor(Y, dtype, device)
    Et = _as_tensor(E, dtype, device)
    if Yt.ndim != 2 or Et.ndim != 2:
        raise ValueError(f"Y must be (bands, n_pixels) and E (bands, R); got {tuple(Yt.shape)}, "
                         f"{tuple(Et.shape)}")
    if Yt.shape[0] != Et.shape[0]:
        raise ValueError(f"Y has {Yt.shape[0]} bands but E has {Et.shape[0]}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if not torch.isfinite(Et).all():
        raise ValueError("the endmember matrix contains NaN or inf")
    R, N = Et.shape[1], Yt.shape[1]

    # Work in float64 for the small factorization regardless of dtype: it is R x R.
    scale = float(torch.linalg.matrix_norm(Et.double(), ord=2)) if normalize else 1.0
    if scale == 0:
        raise ValueError("the endmember matrix is all zeros")
    En = Et / scale
    lam_n = lam / scale**2
    mu0 = (0.01 if normalize else 1e-2) if mu is None else float(mu)
    if mu0 <= 0:
        raise ValueError(f"mu must be > 0, got {mu0}")

    G = (En.double().T @ En.double())
    s, V = torch.linalg.eigh(G)
    s = s.clamp_min(0).to(dtype)
    V = V.to(dtype)
    Vt1 = V.T @ torch.ones(R, dtype=dtype, device=Et.device)  # (R,)

    out = torch.empty((R, N), dtype=dtype, device=Et.device)
    tol_p = tol * math.sqrt(R)
    max_used = 0
    n_conv = 0
    worst = 0.0
    for start in range(0, N, batch_pixels):
        stop = min(N, start + batch_pixels)
        # pixels as rows: (n, R) keeps R contiguous
        EtY = (Yt[:, start:stop].T / scale) @ En  # (n, R)
        n = EtY.shape[0]
        if x0 is not None:
            z = _as_tensor(x0, dtype, device)[:, start:stop].T.clone()
        else:
            z = torch.zeros((n, R), dtype=dtype, device=Et.device)
        d = torch.zeros_like(z)
        x = z.clone()
        mu_p = torch.full((n, 1), mu0, dtype=dtype, device=Et.device)
        active = torch.ones(n, dtype=torch.bool, device=Et.device)
        idx = torch.arange(n, device=Et.device)
        it = 0
        res_p = torch.zeros(n, dtype=dtype, device=Et.device)
        while it < max_iter and idx.numel():
            it += 1
            za, da, ma, ba = z[idx], d[idx], mu_p[idx], EtY[idx]
            inv = 1.0 / (s + ma)  # (m, R): diag of (S + mu)^-1 per pixel
            xa = ((ba + ma * (za + da)) @ V * inv) @ V.T
            if asc:
                # affine correction onto 1^T x = 1:  x += IF 1 (1 - 1^T x) / (1^T IF 1)
                w = Vt1 * inv  # (m, R) = (S+mu)^-1 V^T 1
                if1 = w @ V.T  # IF 1
                denom = (w * Vt1).sum(-1, keepdim=True)
                xa = xa + if1 * ((1.0 - xa.sum(-1, keepdim=True)) / denom)
            v = xa - da
            if lam_n > 0:
                v = torch.sign(v) * (v.abs() - lam_n / ma).clamp_min(0)
            z_new = v.clamp_min(0) if anc else v
            d_new = da - (xa - z_new)
            rp = (xa - z_new).norm(dim=-1)
            rd = ma[:, 0] * (z_new - za).norm(dim=-1)
            x[idx], z[idx], d[idx] = xa, z_new, d_new
            res_p[idx] = rp
            if tol > 0:
                done = (rp <= tol_p) & (rd <= tol_p)
            else:
                done = torch.zeros_like(rp, dtype=torch.bool)
            if adaptive_mu and it % 10 == 0:
                up = (rp > 10 * rd) & ~done
                dn = (rd > 10 * rp) & ~done
                f = torch.where(up, 2.0, torch.where(dn, 0.5, 1.0)).to(dtype)[:, None]
                mu_p[idx] = ma * f
                d[idx] = d_new / f  # scaled dual follows mu
            if done.any():
                active[idx[done]] = False
                idx = idx[~done]
        max_used = max(max_used, it)
        n_conv += int(n - idx.numel()) if tol > 0 else 0
        worst = max(worst, float(res_p.max()) if n else 0.0)
        if anc and asc:
            res = project_simplex(z, dim=-1)
        elif anc:
            res = z
        else:
            res = x
        out[:, start:stop] = res.T
    info = SunsalInfo(iterations=max_used, converged_fraction=(n_conv / N if N and tol > 0 else 1.0),
                      max_primal_residual=worst)
    if warn and tol > 0 and N and n_conv < N:
        warnings.warn(
            f"SUnSAL: {N - n_conv} of {N} pixels did not reach tol={tol} in max_iter={max_iter} "
            f"iterations (largest primal residual {worst:.3g})",
            ConvergenceWarning,
            stacklevel=2,
        )
    return (out, info) if return_info else out


def fcls(Y: ArrayLike, E: ArrayLike, **kwargs: object) -> torch.Tensor:
    """Fully constrained least squares (ANC + ASC, ``lam = 0``) via :func:`sunsal_solve`."""
    return sunsal_solve(Y, E, lam=0.0, anc=True, asc=True, **kwargs)  # type: ignore[arg-type]


def nnls(Y: ArrayLike, E: ArrayLike, **kwargs: object) -> torch.Tensor:
    """Non-negative least squares (ANC only) via :func:`sunsal_solve`."""
    return sunsal_solve(Y, E, lam=0.0, anc=True, asc=False, **kwargs)  # type: ignore[arg-type]


def unconstrained_ls(Y: ArrayLike, E: ArrayLike, *, dtype: torch.dtype = torch.float64,
                     device: str = "cpu") -> torch.Tensor:
    """Unconstrained least squares ``argmin ||y - E x||`` for every column of ``Y``, shape (R, n)."""
    Et = _as_tensor(E, dtype, device)
    Yt = _as_tensor(Y, dtype, device)
    return torch.linalg.lstsq(Et, Yt).solution
