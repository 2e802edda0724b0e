"""SUnSAL: ADMM for constrained sparse regression (Bioucas-Dias & Figueiredo, 2010).

Solves, for every pixel ``y`` (a column of ``Y``) at once::

    min_x  1/2 ||y - E x||^2 + lam ||x||_1   s.t.  x >= 0 (ANC, optional),  1^T x = 1 (ASC, optional)

with the splitting ``x = z`` and the scaled dual ``d`` (U-ADMM-AENet paper, eq. 3-5, from ``z = d = 0``)::

    x <- (E^T E + mu I)^-1 (E^T y + mu (z + d))      [+ affine correction onto 1^T x = 1 under ASC]
    z <- max(soft(x - d, lam / mu), 0)                [no clamp without ANC]
    d <- d - (x - z)

Implementation notes
--------------------
- One eigendecomposition ``E^T E = V diag(s) V^T`` per call replaces the ``(E^T E + mu I)^-1`` factor, so
  ``mu`` can differ per pixel at the cost of two ``R x R`` products per pixel and iteration. Under ASC the
  affine correction ``x += IF 1 (1 - 1^T x) / (1^T IF 1)`` (``IF = (E^T E + mu I)^-1``) is folded into the
  eigenbasis, so it costs a dot product, not another product with ``IF``.
- Every pixel runs its own ADMM: its own residuals, its own adaptive ``mu`` and its own stop. As in the
  reference code, the primal ``||x - z||`` and dual ``mu ||z - z_prev||`` residuals are looked at every
  ``10`` iterations; ``mu`` is doubled (halved) when the primal residual exceeds (falls below) ten times
  the dual one, and the scaled dual follows. A pixel's result therefore does not depend on which other
  pixels share its block: tiled and untiled runs agree (to float rounding).
- The working arrays hold only the pixels still running, contiguously; finished pixels are removed at
  those checks (every ``10`` iterations), so there is no gather/scatter inside the inner iterations.
- **Polishing** (``tol > 0`` and ``polish=True``, the default): at every check the support (and signs) of
  ``z`` are taken as a guess of the optimal active set; the equality-constrained least-squares problem on
  that support is solved exactly (precomputed ``(k+1) x (k+1)`` inverse per support) and accepted if it
  satisfies the KKT conditions of the full problem to rounding. Such a pixel stops with the exact optimum
  (in the working precision); ADMM's job is only to find the active set. Pixels whose guess fails go on
  iterating. This is the solution-polishing step of OSQP (Stellato et al., 2020) applied per pixel.
- **Phase 0** (with polishing): before any iteration, every pixel is polished from the support of ``x0``
  (default: all endmembers, i.e. the equality-constrained LS solution), with up to three active-set
  corrections. On the scale benchmark 91 % of the pixels are certified by the first solve and all of
  them within three corrections, so ADMM runs only for the rare pixel whose active set this misses.
  The answer is the same certified optimum as before (the problem is strictly convex); only the work
  changes (``SunsalInfo.mean_iterations`` is then about 0).
- Polisher parameters come from a ``(n_par, base^R)`` table indexed by the support code itself
  (``index_select``; a single broadcast column and one ``addmm`` when every pixel has the same
  pattern); masks are applied by multiplying with 0/1 (``torch.where``/``masked_fill`` were 5-10x slower
  per element here).
- Pixels are processed in batches of ``batch_pixels`` so the working set stays in cache, for the first
  30 iterations (with polishing on, nearly every pixel is done by then); the pixels left from all batches
  are then pooled into one working set, so a long tail costs its per-iteration overhead once.
- The data term ``E^T y`` is formed once for the whole block. A numpy float input goes through numpy's
  BLAS (its float32 -> float64 conversion is several times faster than torch's; one product over the
  block costs half of per-batch products over column slices), single-threaded inside Dask tasks
  (:func:`xr_unmix.runtime.blas_threads`); everything else is torch.
- **Invalid pixels**: a pixel with NaN or inf in any band has a non-finite data term; it is solved as a
  stand-in (the data term of ``E 1/R``, certified at once) and returned as NaN in every row. So a block
  with nodata can be passed as it is (see ``handles_nan`` in :func:`xr_unmix.tiling.masked_kernel`).
- With ``normalize=True`` (default) the problem is rescaled by the spectral norm of ``E`` first
  (``lam`` scaled accordingly), which makes the default ``mu`` sensible whatever the reflectance scale.
"""

from __future__ import annotations

import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConvergenceWarning
from ..runtime import batch_workers, check_cuda, single_torch_thread, task_blas_threads
from ._active_set import active_set_solve

ArrayLike = np.ndarray | torch.Tensor

_CHECK_EVERY = 10  # iterations between residual checks and mu updates (as the reference code)
_POLISH_EVERY = 3  # iterations between polishing attempts (measured: 2-5 all fine, 10 slower)
_MAX_POLISH_GROUPS = 64  # at most this many distinct supports are polished per check (large R only)
_POLISH_BATCH = 65536  # pixels per polish call before the first iteration (phase 0)
_TABLE_MAX_CODES = 4096  # up to this many support codes (base^R): a direct table instead of unique()
_ACTIVE_SET_BATCH = 8192  # pixels per active-set call (large libraries with ANC)


@dataclass(frozen=True)
class SunsalInfo:
    """Diagnostics of one :func:`sunsal_solve` call."""

    iterations: int  #: the most iterations any pixel used
    converged_fraction: float  #: fraction of pixels that met the tolerance or were polished
    max_primal_residual: float  #: largest final per-pixel ``||x - z||`` among non-polished pixels
    polished_fraction: float = 0.0  #: fraction of pixels that ended with an exact (KKT-certified) solve
    mean_iterations: float = 0.0  #: mean number of ADMM iterations per pixel


_POLISHERS: dict[tuple[bytes, float, bool, bool, torch.dtype, str], _Polisher] = {}
_POLISHERS_LOCK = threading.Lock()


def _get_polisher(G64: torch.Tensor, lam: float, anc: bool, asc: bool, dtype: torch.dtype) -> _Polisher:
    """A :class:`_Polisher`, shared between calls with the same problem (e.g. the blocks of one cube)."""
    key = (G64.cpu().numpy().tobytes(), lam, anc, asc, dtype, str(G64.device))
    with _POLISHERS_LOCK:
        pol = _POLISHERS.get(key)
        if pol is None:
            if len(_POLISHERS) >= 16:
                _POLISHERS.pop(next(iter(_POLISHERS)))
            pol = _POLISHERS[key] = _Polisher(G64, lam, anc, asc, dtype)
    return pol


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


class _Polisher:
    """Exact solves on guessed supports, with a KKT certificate (see module notes).

    Every support (and, without ANC, sign pattern) ``S`` met so far has a cached column of parameters:
    the zero-padded ``R x R`` matrix ``M_S`` and vectors such that ``x = M_S (b + shift_S) + c_S`` and the
    ASC multiplier ``nu = a_S . (b + shift_S) + c_nu``. A call gathers each pixel's column by its support
    code and evaluates all pixels with elementwise operations (no per-group gather/scatter).
    """

    def __init__(self, G64: torch.Tensor, lam: float, anc: bool, asc: bool, dtype: torch.dtype) -> None:
        self.G64 = G64
        self.G = G64.to(dtype)
        self.R = R = G64.shape[0]
        self.lam, self.anc, self.asc, self.dtype = lam, anc, asc, dtype
        self.cache: dict[int, torch.Tensor] = {}
        self.eps = float(torch.finfo(dtype).eps)
        dev = G64.device
        self.base = 2 if anc else 3
        self.pow = (self.base ** torch.arange(R, device=dev)).unsqueeze(1)  # (R, 1)
        self.n_par = R * R + 4 * R + 2  # M, c, shift, a, support, c_nu, valid
        # Small problems (base^R codes, e.g. 32 for FCLS with 5 endmembers): one (n_par, base^R) table
        # indexed by the code itself, its columns filled on first use, gathered with index_select.
        n_codes = self.base ** R
        self.table: torch.Tensor | None = None
        if n_codes <= _TABLE_MAX_CODES:
            # a normal tensor even when first built under torch.inference_mode (DEQ's FCLS start): the
            # polisher is shared between calls, and an inference tensor cannot be updated outside it
            with torch.inference_mode(False):
                self.table = torch.zeros((self.n_par, n_codes), dtype=dtype, device=dev)
            self.filled = torch.zeros(n_codes, dtype=torch.bool)
            self.powf = (self.base ** torch.arange(R, device=dev)).to(dtype).unsqueeze(0)  # (1, R)
            self.lock = threading.Lock()

    def _column(self, code: int) -> torch.Tensor:
        """Parameter column (n_par,) of the support/sign pattern ``code``; ``valid = 0`` if unusable."""
        R, dev = self.R, self.G64.device
        S, signs, cc = [], [], code
        for j in range(R):
            digit = cc % self.base
            cc //= self.base
            if digit:
                S.append(j)
                signs.append(1.0 if digit == 1 else -1.0)
        col = torch.zeros(self.n_par, dtype=torch.float64, device=dev)
        k = len(S)
        if self.asc and not k:
            return col.to(self.dtype)  # infeasible: valid = 0
        Gs = self.G64[S][:, S]
        if self.asc:
            K = torch.zeros((k + 1, k + 1), dtype=torch.float64, device=dev)
            K[:k, :k] = Gs
            K[:k, k] = 1.0
            K[k, :k] = 1.0
        else:
            K = Gs
        if k and float(torch.linalg.cond(K)) > 1e12:
            return col.to(self.dtype)
        M = torch.linalg.inv(K) if k else K
        Si = torch.tensor(S, dtype=torch.long, device=dev)
        Mp = torch.zeros((R, R), dtype=torch.float64, device=dev)
        cp = torch.zeros(R, dtype=torch.float64, device=dev)
        sh = torch.zeros(R, dtype=torch.float64, device=dev)
        ap = torch.zeros(R, dtype=torch.float64, device=dev)
        if k:
            Mp[Si.unsqueeze(1), Si.unsqueeze(0)] = M[:k, :k]
            sh[Si] = -self.lam * torch.tensor(signs, dtype=torch.float64, device=dev)
            if self.asc:
                cp[Si] = M[:k, k]
                ap[Si] = M[k, :k]
        c_nu = float(M[k, k]) if self.asc else 0.0
        col[: R * R] = Mp.reshape(-1)
        col[R * R: R * R + R] = cp
        col[R * R + R: R * R + 2 * R] = sh
        col[R * R + 2 * R: R * R + 3 * R] = ap
        col[R * R + 3 * R: R * R + 4 * R][Si] = 1.0
        col[-2] = c_nu
        col[-1] = 1.0
        return col.to(self.dtype)

    def _params(self, pattern: torch.Tensor) -> torch.Tensor:
        """Parameter columns (n_par, m) for the support/sign patterns of ``pattern`` (R, m); (n_par, 1)
        when every pixel has the same pattern."""
        R, m = pattern.shape
        if self.table is not None:
            ind = (pattern > 0).to(self.dtype)
            if not self.anc:
                ind += 2 * (pattern < 0).to(self.dtype)
            code = (self.powf @ ind)[0].to(torch.int64)  # exact: codes < 2^24
            seen = torch.bincount(code, minlength=self.table.shape[1]).cpu() > 0
            new = (seen & ~self.filled).nonzero()[:, 0].tolist()
            if new:
                with self.lock:
                    for c in new:
                        if not bool(self.filled[c]):
                            self.table[:, c] = self._column(c)
                            self.filled[c] = True
            if int(seen.sum()) == 1:  # one pattern for all (e.g. the first guess): a broadcast column
                c0 = int(code[0])
                return self.table[:, c0:c0 + 1]
            return self.table.index_select(1, code)
        if self.anc:
            code = ((pattern > 0).to(torch.int64) * self.pow).sum(0)
        else:
            code = (((pattern > 0).to(torch.int64) + 2 * (pattern < 0).to(torch.int64)) * self.pow).sum(0)
        codes, inv, counts = torch.unique(code, return_inverse=True, return_counts=True)
        cl = codes.tolist()
        if len(cl) == 1:
            if cl[0] not in self.cache:
                self.cache[cl[0]] = self._column(cl[0])
            return self.cache[cl[0]].unsqueeze(1)
        keep = None
        if len(cl) > _MAX_POLISH_GROUPS:  # only the most frequent patterns
            keep = set(torch.argsort(counts, descending=True)[:_MAX_POLISH_GROUPS].tolist())
        cols = []
        for i, c in enumerate(cl):
            if keep is not None and i not in keep:
                cols.append(torch.zeros(self.n_par, dtype=self.dtype, device=pattern.device))
                continue
            if c not in self.cache:
                self.cache[c] = self._column(c)
            cols.append(self.cache[c])
        return torch.stack(cols, 1).index_select(1, inv)  # (n_par, m)

    def _solve(self, b: torch.Tensor, pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
        """Exact solve on the support/signs of ``pattern`` (R, m). Returns x, ok, g (KKT gradient), tol.

        Masks are applied by multiplying with 0/1 floats rather than ``torch.where`` (several times faster
        on CPU here); every quantity involved is finite (an unusable support has M = 0, c = 0).
        """
        R, m = b.shape
        P = self._params(pattern)
        RR = R * R
        q = b + P[RR + R: RR + 2 * R] if self.lam else b
        if P.shape[1] == 1:  # one support for all: x = M q + c as one product
            x = torch.addmm(P[RR: RR + R], P[:RR, 0].view(R, R), q)
        else:
            x = P[RR: RR + R].clone()
            Pm = P[:RR].view(R, R, m)
            for j in range(R):  # x += M[:, j] q_j, pixel by pixel
                x.addcmul_(Pm[:, j], q[j])
        valid = P[-1] > 0
        # KKT: g = G x - b + nu 1; on the support g + lam sign(x) = 0 by construction
        g = self.G @ x - b
        if self.asc:
            g += (P[RR + 2 * R: RR + 3 * R] * q).sum(0) + P[-2]
        tol = (16 * self.eps) * (1.0 + b.abs().amax(0) + self.lam)
        on = P[RR + 3 * R: RR + 4 * R]  # the solved support, 0/1
        off = 1.0 - on
        x = x * on
        if self.anc:
            sg = on
            ok_x = x.amin(0) >= -tol
            ok_g = ((g + self.lam) * off).amin(0) >= -tol
        else:
            sg = torch.sign(pattern) * on
            ok_x = (x * sg).amin(0) >= -tol
            ok_g = ((g.abs() - self.lam) * off).amax(0) <= tol
        # the support equations themselves (guards against an ill-conditioned solve)
        res_on = ((g + self.lam * sg).abs() * on).amax(0)
        ok = valid & ok_x & ok_g & (res_on <= 64 * tol)
        return x, ok, g, tol

    def __call__(self, b: torch.Tensor, z: torch.Tensor, rounds: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
        """Polish every column. b, z: (R, m). Returns (x (R, m), ok (m,) bool).

        The support of ``z`` is the first guess; a pixel whose guess fails the KKT test gets up to
        ``rounds`` primal-dual active-set corrections (drop the entries of the wrong sign, add the
        entries whose gradient violates the KKT conditions) before it is given back to ADMM.
        """
        x, ok, g, tol = self._solve(b, z)
        for _ in range(rounds):
            bad = (~ok).nonzero()[:, 0]
            if bad.numel() == 0:
                break
            xb, gb, tb = x[:, bad], g[:, bad], tol[bad]
            if self.anc:
                pat = ((xb > tb) | ((xb == 0) & (gb + self.lam < -tb))).to(b.dtype)
            else:
                pat = torch.where(xb.abs() > tb, torch.sign(xb), 0)
                pat = torch.where((xb == 0) & (gb > self.lam + tb), -1.0, pat)
                pat = torch.where((xb == 0) & (gb < -self.lam - tb), 1.0, pat).to(b.dtype)
            x2, ok2, g2, _ = self._solve(b[:, bad], pat)
            x[:, bad], ok[bad], g[:, bad] = x2, ok2, g2
        if self.anc:
            x.clamp_min_(0)
        return x, ok


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
) -> torch.Tensor | tuple[torch.Tensor, SunsalInfo]:
    """Run SUnSAL on many pixels at once.

    Parameters
    ----------
    Y : array or Tensor, shape (bands, n_pixels)
        Spectra, one pixel per column. A pixel with NaN or inf in any band comes out NaN.
    E : array or Tensor, shape (bands, R)
        Endmember matrix; finite, full column rank unless ``mu > 0`` keeps the system regular.
    lam : float
        l1 weight (``lam >= 0``), in the units of the original problem.
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
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    device = torch.device(device)
    check_cuda(device)
    Et = _as_tensor(E, dtype, device)
    Ynp: np.ndarray | None = None
    if isinstance(Y, torch.Tensor):
        Yt = Y.to(device=device)
        yshape = tuple(Yt.shape)
    else:
        Ynp = np.asarray(Y)
        yshape = Ynp.shape
    if len(yshape) != 2 or Et.ndim != 2:
        raise ValueError(f"Y must be (bands, n_pixels) and E (bands, R); got {yshape}, {tuple(Et.shape)}")
    if yshape[0] != Et.shape[0]:
        raise ValueError(f"Y has {yshape[0]} bands but E has {Et.shape[0]}")
    if not (lam >= 0):
        raise ValueError(f"lam must be >= 0, got {lam}")
    if max_iter < 0 or tol < 0 or batch_pixels < 1:
        raise ValueError(f"need max_iter >= 0, tol >= 0, batch_pixels >= 1; got {max_iter}, {tol}, "
                         f"{batch_pixels}")
    E64 = _as_tensor(E, torch.float64, device)
    if not torch.isfinite(E64).all():
        raise ValueError("the endmember matrix contains NaN or inf")
    R, N = Et.shape[1], yshape[1]
    if x0 is not None:
        x0t = _as_tensor(x0, dtype, device)
        if tuple(x0t.shape) != (R, N):
            raise ValueError(f"x0 must have shape {(R, N)}, got {tuple(x0t.shape)}")

    # The small R x R algebra is done in float64 whatever dtype is.
    scale = float(torch.linalg.matrix_norm(E64, ord=2)) if normalize else 1.0
    if scale == 0:
        raise ValueError("the endmember matrix is all zeros")
    En64 = E64 / scale
    lam_n = float(lam) / scale**2
    mu0 = 0.01 if mu is None else float(mu)
    if not (mu0 > 0):
        raise ValueError(f"mu must be > 0, got {mu0}")

    G64 = En64.T @ En64
    s64, V64 = torch.linalg.eigh(G64)
    s64 = s64.clamp_min(0)
    s = s64.to(dtype).unsqueeze(1)  # (R, 1)
    V = V64.to(dtype)
    VT = V.T.contiguous()
    Vt1 = (V64.T @ torch.ones(R, dtype=torch.float64, device=Et.device)).to(dtype).unsqueeze(1)  # (R, 1)
    # E_n^T y_n of the normalized problem, as one product with E / scale^2
    EbT = (En64 / scale).T.to(dtype).contiguous()
    EbT_np = (En64 / scale).T.contiguous().cpu().numpy()
    # A large library with ANC: a batched active-set solve of every pixel first (exact, a few steps per
    # non-zero abundance); ADMM, without polishing, only for the pixels it leaves (none so far measured)
    use_as = polish and tol > 0 and anc and 2 ** R > _TABLE_MAX_CODES
    polisher = _get_polisher(G64, lam_n, anc, asc, dtype) if (polish and tol > 0 and not use_as) else None
    check = tol > 0 or adaptive_mu
    # residual tolerance, scaled by 1/cond(E^T E): the ADMM residuals bound the abundance error only up
    # to the smallest eigenvalue of E^T E, so an ill-conditioned problem needs smaller residuals.
    cond_scale = float(s64[0] / s64[-1]) if float(s64[-1]) > 0 else 0.0
    tol_p = tol * math.sqrt(R) * min(1.0, max(cond_scale, 1e-6))
    thr = lam_n  # soft threshold is lam_n / mu per pixel

    # The data term E_n^T y_n of every pixel, once, (R, N). A numpy float input goes through numpy's BLAS
    # in one product over the whole block (batch-by-batch products of column slices cost twice as
    # much), single-threaded inside Dask tasks (OpenBLAS's own threads on top of Dask's doubled the CPU
    # time of this memory-bound product); other inputs through torch, batch by batch.
    # (float64 for the active-set path: with cond(E^T E) ~ 1e7-1e9, a float32 data term alone moved the
    # exact answer by up to 2e-2; its cost is the product, a small part of the solve there)
    bdt = torch.float64 if use_as else dtype
    np_dt = {torch.float32: np.float32, torch.float64: np.float64}.get(bdt)
    if Ynp is not None and Et.device.type == "cpu" and np_dt is not None:
        Eb = EbT_np.astype(np_dt)
        with task_blas_threads(), np.errstate(over="ignore", invalid="ignore"):
            if Ynp.dtype == np_dt:
                b_np = Eb @ Ynp
            else:  # convert batch by batch: no full-size copy of Y
                b_np = np.empty((R, N), dtype=np_dt)
                for s0 in range(0, N, batch_pixels):
                    b_np[:, s0:s0 + batch_pixels] = Eb @ Ynp[:, s0:s0 + batch_pixels].astype(np_dt)
        finite = torch.from_numpy(np.isfinite(b_np).all(0))
        b_all = torch.from_numpy(b_np)
    else:
        parts_b = []
        for s0 in range(0, N, batch_pixels):
            src = Yt[:, s0:s0 + batch_pixels] if Ynp is None else torch.as_tensor(
                np.ascontiguousarray(Ynp[:, s0:s0 + batch_pixels]), device=device)
            parts_b.append(EbT.to(bdt) @ src.to(bdt))
        b_all = torch.cat(parts_b, 1) if parts_b else torch.empty((R, 0), dtype=bdt, device=Et.device)
        finite = torch.isfinite(b_all).all(0)
    # Pixels with a NaN or inf in any band have a non-finite data term. They get the data term of the
    # spectrum E 1/R (for FCLS, its answer 1/R is interior and the first polish certifies it at once) and
    # come out NaN: cheaper than compacting every array and expanding the result.
    bad: torch.Tensor | None = None
    if not bool(finite.all()):
        bad = (~finite).nonzero()[:, 0].to(Et.device)
        stand_in = (G64 @ torch.full((R, 1), 1.0 / R, dtype=torch.float64, device=Et.device)).to(bdt)
        b_all.index_copy_(1, bad, stand_in.expand(R, bad.numel()))

    out = torch.empty((R, N), dtype=dtype, device=Et.device)
    stats = {"n_conv": 0, "n_pol": 0, "total_it": 0.0, "worst": 0.0, "max_used": 0}

    def coeffs(m_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        inv_ = (s + m_).reciprocal_()  # (R, m): diag of (S + mu)^-1 per pixel
        if not asc:
            return inv_, None, None
        w_ = inv_ * Vt1  # (S + mu)^-1 V^T 1
        return inv_, w_, (w_ * Vt1).sum(0, keepdim=True).reciprocal_()  # 1 / (1^T IF 1)

    def finish(cols: torch.Tensor, z_: torch.Tensor, x_: torch.Tensor) -> None:
        if anc and asc:
            out[:, cols] = project_simplex(z_, dim=0)
        elif asc:
            out[:, cols] = x_
        else:
            out[:, cols] = z_

    def iterate(st: dict[str, torch.Tensor], it: int, it_stop: int) -> int:
        """ADMM on the working set ``st`` (columns ``st['idx']`` of ``out``) from iteration ``it`` to
        ``it_stop``; finished pixels are written to ``out`` and dropped from ``st``. Returns the last it."""
        idx, z, d, x, mu_p, bw = st["idx"], st["z"], st["d"], st["x"], st["mu"], st["b"]
        rp_last = st["rp"]
        loc = {"n_conv": 0, "n_pol": 0, "total_it": 0.0}
        inv, w, rden = coeffs(mu_p)
        while it < it_stop and idx.numel():
            it += 1
            # x-step in the eigenbasis: u = V^T (b + mu (z + d))
            t = torch.add(z, d).mul_(mu_p).add_(bw)
            u = VT @ t
            if asc:
                # x = V[(S+mu)^-1 u + (S+mu)^-1 V^T 1 (1 - w^T u) / (1^T IF 1)]
                corr = (1.0 - (u * w).sum(0, keepdim=True)).mul_(rden)
                u.addcmul_(Vt1, corr)
            u.mul_(inv)
            x = V @ u
            v = x - d
            if thr > 0:
                tau = thr / mu_p
                if anc:
                    z_new = (v - tau).clamp_min_(0)
                else:
                    z_new = torch.sign(v) * (v.abs() - tau).clamp_min_(0)
            else:
                z_new = v.clamp_min(0) if anc else v.clone()
            d_new = z_new - v  # = d - (x - z_new)
            is_res = check and it % _CHECK_EVERY == 0
            is_pol = polisher is not None and it % _POLISH_EVERY == 0 and (
                it <= 4 * _CHECK_EVERY or it % _CHECK_EVERY == 0)
            if is_res:
                rp = (d - d_new).square_().sum(0).sqrt_()  # ||x - z_new||
                rd = mu_p[0] * (z_new - z).square_().sum(0).sqrt_()
                rp_last = rp
            z, d = z_new, d_new
            if not (is_res or is_pol):
                continue
            if is_res and tol > 0:
                done = (rp <= tol_p) & (rd <= tol_p)
            else:
                done = torch.zeros(idx.numel(), dtype=torch.bool, device=Et.device)
            if is_pol:
                xp, okp = polisher(bw, z)  # type: ignore[misc]
                if okp.any():
                    k = int(okp.sum())
                    out[:, idx[okp]] = xp[:, okp]
                    loc["n_pol"] += k
                    loc["total_it"] += it * k
                fin = done & ~okp
                done = done | okp
            else:
                fin = done
            if fin.any():  # finished by the residual test: ADMM answer
                loc["total_it"] += it * int(fin.sum())
                finish(idx[fin], z[:, fin], x[:, fin])
            loc["n_conv"] += int(done.sum())
            if adaptive_mu and is_res:
                up = (rp > 10 * rd) & ~done
                dn = (rd > 10 * rp) & ~done
                if up.any() or dn.any():
                    f = torch.where(up, 2.0, torch.where(dn, 0.5, 1.0)).to(dtype).unsqueeze(0)
                    mu_p = mu_p * f
                    d = d / f  # the scaled dual follows mu
                    inv, w, rden = coeffs(mu_p)
            if done.any():  # compact the working arrays
                keep = ~done
                idx, z, d, x, mu_p, bw = idx[keep], z[:, keep], d[:, keep], x[:, keep], mu_p[:, keep], bw[:, keep]
                rp_last = rp_last[keep]
                inv = inv[:, keep]
                if asc:
                    w, rden = w[:, keep], rden[:, keep]  # type: ignore[index]
        st.update(idx=idx, z=z, d=d, x=x, mu=mu_p, b=bw, rp=rp_last)
        with lock:
            for key, val in loc.items():
                stats[key] += val
            stats["max_used"] = max(stats["max_used"], it)
        return it

    # Phase 0 (with polishing): an exact active-set solve of every pixel before any iteration, in slices
    # of up to _POLISH_BATCH pixels (elementwise work: larger slices only amortise per-call overhead).
    # Phase 1, batch by batch (cache-sized): the first iterations of the pixels left, where almost every
    # pixel finishes. Phase 2: the few pixels left from all batches, pooled, so the per-iteration overhead
    # of a long tail is paid once rather than once per batch. Each pixel follows its own trajectory.
    head = max_iter if polisher is None else min(max_iter, 3 * _CHECK_EVERY)
    lock = threading.Lock()

    def phase0(start: int) -> torch.Tensor:
        """Polish pixels start.. from the support of x0 (default: every endmember; the active-set
        corrections then drop the wrong-sign entries); returns the indices of those not certified."""
        stop = min(N, start + max(batch_pixels, _POLISH_BATCH))
        b = b_all[:, start:stop]
        xp, okp = polisher(b, x0t[:, start:stop] if x0 is not None else torch.ones_like(b))  # type: ignore[misc]
        k = int(okp.sum())
        with lock:
            stats["n_pol"] += k
            stats["n_conv"] += k
        out[:, start:stop] = xp  # the pixels not certified are overwritten by ADMM later
        if k == stop - start:
            return torch.empty(0, dtype=torch.long, device=Et.device)
        return (~okp).nonzero()[:, 0] + start

    def phase1(batch: tuple[int, int] | torch.Tensor) -> dict[str, torch.Tensor] | None:
        """ADMM's first ``head`` iterations on a range (start, stop) or an index tensor of pixels."""
        if isinstance(batch, tuple):
            idx = torch.arange(*batch, device=Et.device)
            b = b_all[:, batch[0]:batch[1]].to(dtype).contiguous()
            z0 = x0t[:, batch[0]:batch[1]].clone() if x0 is not None else None
        else:
            idx = batch
            b = b_all.index_select(1, idx).to(dtype)
            z0 = x0t.index_select(1, idx) if x0 is not None else None
        n = idx.numel()
        if z0 is None:
            z0 = torch.zeros((R, n), dtype=dtype, device=Et.device)
        st = {"idx": idx, "z": z0, "d": torch.zeros_like(z0), "x": z0,
              "mu": torch.full((1, n), mu0, dtype=dtype, device=Et.device), "b": b,
              "rp": torch.zeros(n, dtype=dtype, device=Et.device)}
        iterate(st, 0, head)
        return st if st["idx"].numel() else None

    def run(fn, items: list) -> list:  # type: ignore[type-arg]
        workers = batch_workers(Et.device, len(items))
        if workers <= 1:
            return [fn(it_) for it_ in items]
        # batches in parallel, one torch thread each (runtime's thread policy)
        # inference and grad mode are thread-local: the pool's threads run in the caller's (the arrays
        # made under torch.inference_mode can only be updated inside it)
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def in_mode(item):  # type: ignore[no-untyped-def]
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(item)

        with single_torch_thread(), ThreadPoolExecutor(workers) as pool:
            return list(pool.map(in_mode, items))

    def phase_as(start: int) -> torch.Tensor:
        """The active-set solve of pixels start..; returns the indices of those not certified."""
        stop = min(N, start + _ACTIVE_SET_BATCH)
        x, ok, steps = active_set_solve(G64, b_all[:, start:stop], lam_n, asc,
                                        x0=x0t[:, start:stop] if x0 is not None else None)
        out[:, start:stop] = x.to(dtype)
        k = int(ok.sum())
        with lock:
            stats["n_pol"] += k
            stats["n_conv"] += k
            stats["total_it"] += float(steps[ok].sum())
            stats["max_used"] = max(stats["max_used"], int(steps.max()) if steps.numel() else 0)
        return (~ok).nonzero()[:, 0] + start

    if use_as:
        rest = run(phase_as, list(range(0, N, _ACTIVE_SET_BATCH)))
        todo = torch.cat(rest) if rest else torch.empty(0, dtype=torch.long, device=Et.device)
        batches = [todo[i:i + batch_pixels] for i in range(0, todo.numel(), batch_pixels)]
    elif polisher is not None:
        rest = run(phase0, list(range(0, N, max(batch_pixels, _POLISH_BATCH))))
        todo = torch.cat(rest) if rest else torch.empty(0, dtype=torch.long, device=Et.device)
        batches: list = [todo[i:i + batch_pixels] for i in range(0, todo.numel(), batch_pixels)]
    else:
        batches = [(i, min(N, i + batch_pixels)) for i in range(0, N, batch_pixels)]
    parts = run(phase1, batches)
    left = [p for p in parts if p is not None]
    if left and head < max_iter:
        st = {k: torch.cat([p[k] for p in left], dim=(0 if k in ("idx", "rp") else 1)) for k in left[0]}
        iterate(st, head, max_iter)
        left = [st] if st["idx"].numel() else []
    for st in left:  # pixels that ran out of iterations (or tol == 0)
        stats["total_it"] += stats["max_used"] * st["idx"].numel()
        if tol > 0:
            stats["worst"] = max(stats["worst"], float(st["rp"].max()))
        finish(st["idx"], st["z"], st["x"])
    max_used, n_conv, n_pol = int(stats["max_used"]), int(stats["n_conv"]), int(stats["n_pol"])
    total_it, worst = float(stats["total_it"]), float(stats["worst"])
    info = SunsalInfo(iterations=max_used, converged_fraction=(n_conv / N if N and tol > 0 else 1.0),
                      max_primal_residual=worst, polished_fraction=(n_pol / N if N else 0.0),
                      mean_iterations=(total_it / N if N else 0.0))
    if warn and tol > 0 and N and n_conv < N:
        from .._warn import user_stacklevel

        warnings.warn(
            f"SUnSAL: {N - n_conv} of {N} pixels did not reach tol={tol} in max_iter={max_iter} "
            f"iterations (largest primal residual {worst:.3g})",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
    if bad is not None:
        out.index_fill_(1, bad, float("nan"))
    return (out, info) if return_info else out


def fcls(Y: ArrayLike, E: ArrayLike, **kwargs: object) -> torch.Tensor:
    """Fully constrained least squares (ANC + ASC, ``lam = 0``) via :func:`sunsal_solve`, shape (R, n)."""
    return sunsal_solve(Y, E, lam=0.0, anc=True, asc=True, **kwargs)  # type: ignore[arg-type,return-value]


def nnls(Y: ArrayLike, E: ArrayLike, **kwargs: object) -> torch.Tensor:
    """Non-negative least squares (ANC only) via :func:`sunsal_solve`, shape (R, n)."""
    return sunsal_solve(Y, E, lam=0.0, anc=True, asc=False, **kwargs)  # type: ignore[arg-type,return-value]


def unconstrained_ls(Y: ArrayLike, E: ArrayLike, *, dtype: torch.dtype = torch.float64,
                     device: str = "cpu") -> torch.Tensor:
    """Unconstrained least squares ``argmin ||y - E x||`` for every column of ``Y``, shape (R, n)."""
    Et = _as_tensor(E, dtype, device)
    Yt = _as_tensor(Y, dtype, device)
    return torch.linalg.lstsq(Et, Yt).solution
