"""SUnSAL's entry points: :func:`sunsal_solve` and its special cases (FCLS, NNLS, unconstrained LS).

:func:`sunsal_solve` checks and normalizes the problem (:mod:`.problem`), forms the data term, and runs
the schedule of :mod:`.phases`: exact first guesses (:mod:`.polish`, :mod:`.active_set`), then ADMM
(:mod:`.admm`) for the pixels they leave.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ...errors import ConvergenceWarning
from .admm import Admm, Tally
from .phases import Schedule
from .polish import TABLE_MAX_CODES, get_polisher
from .problem import ArrayLike, as_tensor, data_term, normalize_problem, read_inputs

#: Above this normalised l1 weight (``lam / ||E||_2^2``) an ASC-only float32 solve runs in float64: its
#: float32 error grows as ``lam_n * eps`` (sum-to-one off by 1.6e-5 at ``lam_n = 2.9``, 7e-7 at 0.29).
LAM_N_FLOAT32 = 1.0


@dataclass(frozen=True)
class SunsalInfo:
    """Diagnostics of one :func:`sunsal_solve` call."""

    iterations: int  #: the most iterations any pixel used
    converged_fraction: float  #: fraction of pixels that met the tolerance or were polished
    max_primal_residual: float  #: largest final per-pixel ``||x - z||`` among non-polished pixels
    polished_fraction: float = 0.0  #: fraction of pixels that ended with an exact (KKT-certified) solve
    mean_iterations: float = 0.0  #: mean number of ADMM iterations per pixel


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
    polish: bool = True,
    progress: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, SunsalInfo]:
    """Run SUnSAL on many pixels at once.

    Parameters
    ----------
    Y : array or Tensor, shape (bands, n_pixels)
        Spectra, one pixel per column. A pixel with NaN or inf in any band comes out NaN.
    E : array or Tensor, shape (bands, R)
        Endmember matrix; finite, full column rank unless ``mu > 0`` keeps the system regular.
    lam : float
        l1 weight (``lam >= 0``), in the units of the original problem. With ``anc`` and ``asc`` it is
        a constant on the simplex and is dropped (the same answer, exact in float32 at any ``lam``);
        with ``asc`` alone and ``lam / ||E||_2^2 >`` :data:`LAM_N_FLOAT32` a float32 solve runs in
        float64 (its error grows as ``lam * eps``) and is returned as float32.
    anc, asc : bool
        Enforce non-negativity / sum-to-one.
    mu : float, optional
        ADMM penalty (``> 0``). Default 0.01 on the normalized problem (as the reference code).
    max_iter : int
        Iteration limit per pixel.
    tol : float
        Per-pixel tolerance on the primal ``||x - z||`` and dual ``mu ||z - z_prev||`` residuals, scaled
        by ``sqrt(R) / cond(E^T E)`` (so that it roughly bounds the abundance error even for correlated
        endmembers), looked at every 10 iterations. ``tol=0`` runs exactly ``max_iter`` iterations
        (no checks, no ``mu`` update, no polishing).
    adaptive_mu : bool
        Rebalance ``mu`` per pixel every 10 iterations (reference behaviour; only with ``tol > 0``
        or when ``max_iter >= 10``).
    normalize : bool
        Rescale the problem by ``||E||_2`` first (see module notes). ``False`` uses ``mu`` and ``lam`` as given.
    x0 : array, shape (R, n_pixels), optional
        Start for ``z`` (default 0, with ``d = 0``); with polishing, its support is also the first
        active-set guess (default: every endmember).
    device, dtype
        Where and in which precision to compute (``"cuda"`` works when torch sees a GPU).
    batch_pixels : int
        Pixels per inner batch. Called from the main thread on CPU with ``torch.get_num_threads() > 1``,
        batches run on that many threads with one torch thread each (the setting is restored after).
    return_info : bool
        Also return a :class:`SunsalInfo`.
    warn : bool
        Emit a :class:`~xr_unmix.errors.ConvergenceWarning` if some pixels hit ``max_iter`` (with ``tol > 0``).
    polish : bool
        With ``tol > 0``: at each check, try the exact solve on the support of ``z`` and stop the pixels
        whose KKT conditions hold (module notes). Makes the answer exact to the working precision.
    progress : bool
        Show a tqdm bar (:mod:`xr_unmix._progress`) over the pixels, advanced as pixels finish (are
        certified or meet the tolerance); it reaches ``n_pixels`` when the call returns. The results are
        the same with and without it.

    Returns
    -------
    Tensor, shape (R, n_pixels), ``dtype``, on ``device``
        Abundances: a polished pixel's exact solution, else the split variable ``z`` (so ``>= 0`` holds
        exactly under ANC), projected onto the simplex when ANC and ASC are both on (so both hold
        exactly), or ``x`` under ASC without ANC (so ``1^T x = 1`` holds). With ``tol=0`` and
        ``asc=False`` this is the plain ``z`` after ``max_iter`` iterations.
    (Tensor, SunsalInfo)
        With ``return_info=True``.

    Raises
    ------
    ValueError
        Shapes that do not fit, ``lam < 0``, ``mu <= 0``, non-finite or all-zero ``E``.
    """
    if anc and asc and lam > 0:
        # on the simplex lam ||x||_1 = lam is a constant: the same answer without it, and a large lam
        # only cost float32 precision there (sum-to-one off by 1e-3 at lam=1e4, 0.09 at lam=1e6)
        lam = 0.0
    inp = read_inputs(Y, E, x0, lam=lam, max_iter=max_iter, tol=tol, batch_pixels=batch_pixels, device=device,
                      dtype=dtype)
    R, N, dtype = inp.R, inp.N, inp.dtype
    nrm = normalize_problem(inp.E64, lam=lam, mu=mu, normalize=normalize, dtype=dtype)
    if asc and not anc and dtype == torch.float32 and nrm.lam_n > LAM_N_FLOAT32:
        # ASC alone with a large lam: float32's error grows as lam_n * eps (sum-to-one off by 1e-4 at
        # lam_n = 29, values -0.05 instead of -6e-7 at lam_n = 3e4): solved in float64, returned float32
        res = sunsal_solve(Y, E, lam=lam, anc=anc, asc=asc, mu=mu, max_iter=max_iter, tol=tol,
                           adaptive_mu=adaptive_mu, normalize=normalize, x0=x0, device=device,
                           dtype=torch.float64, batch_pixels=batch_pixels, return_info=return_info,
                           warn=warn, polish=polish, progress=progress)
        return (res[0].float(), res[1]) if isinstance(res, tuple) else res.float()
    # A large library with ANC: a batched active-set solve of every pixel first (exact, a few steps per
    # non-zero abundance), with a float64 data term (with cond(E^T E) ~ 1e7-1e9, a float32 data term alone
    # moved the exact answer by up to 2e-2; its cost is the product, a small part of the solve there)
    use_as = polish and tol > 0 and anc and 2 ** R > TABLE_MAX_CODES
    polisher = get_polisher(nrm.G64, nrm.lam_n, anc, asc, dtype) if (polish and tol > 0 and not use_as) else None
    b_all, bad = data_term(inp, nrm, torch.float64 if use_as else dtype, batch_pixels)

    out = torch.empty((R, N), dtype=dtype, device=inp.dev)
    tally = Tally(bar=_pixel_bar(N) if progress else None)
    admm = Admm(nrm, out, tally, polisher, anc=anc, asc=asc, tol=tol, adaptive_mu=adaptive_mu)
    left = Schedule(inp, nrm, admm, b_all, max_iter=max_iter, batch_pixels=batch_pixels).run(use_as)
    for ws in left:  # pixels that ran out of iterations (or tol == 0)
        tally.total_it += tally.max_used * ws.idx.numel()
        if tol > 0:
            tally.worst = max(tally.worst, float(ws.rp.max()))
        admm.finish(ws.idx, ws.z, ws.x)
    n_conv = int(tally.n_conv)
    if tally.bar is not None:  # the pixels that ran out of iterations are done too
        tally.bar.update(N - n_conv)
        tally.bar.close()
    info = SunsalInfo(iterations=int(tally.max_used), converged_fraction=(n_conv / N if N and tol > 0 else 1.0),
                      max_primal_residual=float(tally.worst), polished_fraction=(tally.n_pol / N if N else 0.0),
                      mean_iterations=(float(tally.total_it) / N if N else 0.0))
    if warn and tol > 0 and N and n_conv < N:
        from ..._warn import user_stacklevel

        warnings.warn(
            f"SUnSAL: {N - n_conv} of {N} pixels did not reach tol={tol} in max_iter={max_iter} "
            f"iterations (largest primal residual {tally.worst:.3g})",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
    if bad is not None:
        out.index_fill_(1, bad, float("nan"))
    return (out, info) if return_info else out


def _pixel_bar(n: int) -> object:
    """A tqdm bar over ``n`` pixels (:func:`xr_unmix._progress.progress_bar`)."""
    from ..._progress import progress_bar

    return progress_bar(total=n, desc="SUnSAL", unit="px", unit_scale=True, mininterval=0.5, leave=False)


def fcls(Y: ArrayLike, E: ArrayLike, **kwargs: object) -> torch.Tensor:
    """Fully constrained least squares (ANC + ASC, ``lam = 0``) via :func:`sunsal_solve`, shape (R, n)."""
    return sunsal_solve(Y, E, lam=0.0, anc=True, asc=True, **kwargs)  # type: ignore[arg-type,return-value]


def nnls(Y: ArrayLike, E: ArrayLike, **kwargs: object) -> torch.Tensor:
    """Non-negative least squares (ANC only) via :func:`sunsal_solve`, shape (R, n)."""
    return sunsal_solve(Y, E, lam=0.0, anc=True, asc=False, **kwargs)  # type: ignore[arg-type,return-value]


def unconstrained_ls(Y: ArrayLike, E: ArrayLike, *, dtype: torch.dtype = torch.float64,
                     device: str = "cpu") -> torch.Tensor:
    """Unconstrained least squares ``argmin ||y - E x||`` for every column of ``Y``, shape (R, n).

    Raises
    ------
    ValueError
        ``E`` not (bands, R) with the bands of ``Y``, or ``E`` with NaN/inf (LAPACK would fail on it
        with an internal assertion). A pixel (column of ``Y``) with NaN/inf comes out NaN.
    """
    Et = as_tensor(E, dtype, device)
    Yt = as_tensor(Y, dtype, device)
    if Et.ndim != 2 or Yt.ndim != 2 or Et.shape[0] != Yt.shape[0]:
        raise ValueError(f"Y must be (bands, n_pixels) and E (bands, R) with the same bands; got "
                         f"{tuple(Yt.shape)}, {tuple(Et.shape)}")
    bad_e = ~torch.isfinite(Et)
    if bool(bad_e.any()):
        cols = sorted({int(c) for c in bad_e.nonzero()[:, 1]})
        raise ValueError(f"the endmember matrix contains NaN or inf (in column(s) {cols[:10]}); clean or "
                         "resample the endmembers first")
    bad = ~torch.isfinite(Yt).all(0)
    if bool(bad.any()):
        Yt = torch.where(bad, torch.zeros((), dtype=Yt.dtype, device=Yt.device), Yt)
    out = torch.linalg.lstsq(Et, Yt).solution
    return out.index_fill_(1, bad.nonzero()[:, 0], float("nan")) if bool(bad.any()) else out
