"""The problem one SUnSAL call sets up: checked inputs, the normalized ``R x R`` algebra, the data term.

- With ``normalize=True`` (default) the problem is rescaled by the spectral norm of ``E`` first (``lam``
  scaled accordingly), which makes the default ``mu`` sensible whatever the reflectance scale.
- One eigendecomposition ``E^T E = V diag(s) V^T`` per call replaces the ``(E^T E + mu I)^-1`` factor
  (see :mod:`.admm`). The small ``R x R`` algebra is done in float64 whatever the working dtype.
- The data term ``E^T y`` is formed once for the whole block. A numpy float input goes through numpy's
  BLAS (its float32 -> float64 conversion is several times faster than torch's; one product over the
  block costs half of per-batch products over column slices), single-threaded inside Dask tasks
  (:func:`xr_unmix.runtime.task_blas_threads`; OpenBLAS's own threads on top of Dask's doubled the CPU
  time of this memory-bound product); other inputs through torch, batch by batch.
- **Invalid pixels**: a pixel with NaN or inf in any band has a non-finite data term; it is solved as a
  stand-in (the data term of ``E 1/R``; for FCLS its answer ``1/R`` is interior and the first polish
  certifies it at once) and returned as NaN in every row, which is cheaper than compacting every array
  and expanding the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...runtime import check_cuda, task_blas_threads

ArrayLike = np.ndarray | torch.Tensor


def as_tensor(a: ArrayLike, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``a`` as a tensor of ``dtype`` on ``device`` (a numpy array is made contiguous first)."""
    if isinstance(a, torch.Tensor):
        return a.to(device=device, dtype=dtype)
    return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)


@dataclass(frozen=True)
class Inputs:
    """The checked arguments of a call: ``Y`` as a tensor (``Yt``) or a numpy array (``Ynp``)."""

    Yt: torch.Tensor | None
    Ynp: np.ndarray | None
    E64: torch.Tensor  #: (bands, R) float64
    x0t: torch.Tensor | None  #: (R, N) in the working dtype
    R: int
    N: int
    dtype: torch.dtype
    device: torch.device  #: as asked for
    dev: torch.device  #: where the tensors are (``cuda:0`` for ``cuda``)


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""))
    if dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")
    return dtype  # type: ignore[return-value]


def read_inputs(Y: ArrayLike, E: ArrayLike, x0: ArrayLike | None, *, lam: float, max_iter: int, tol: float,
                batch_pixels: int, device: str | torch.device, dtype: torch.dtype | str) -> Inputs:
    """Check the arguments of :func:`~xr_unmix.solvers.sunsal_solve` (``ValueError`` naming the problem)."""
    dtype = _dtype(dtype)
    device = torch.device(device)
    check_cuda(device)
    Et = as_tensor(E, dtype, device)
    Yt: torch.Tensor | None = None
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
    E64 = as_tensor(E, torch.float64, device)
    if not torch.isfinite(E64).all():
        raise ValueError("the endmember matrix contains NaN or inf")
    R, N = Et.shape[1], yshape[1]
    x0t = None
    if x0 is not None:
        x0t = as_tensor(x0, dtype, device)
        if tuple(x0t.shape) != (R, N):
            raise ValueError(f"x0 must have shape {(R, N)}, got {tuple(x0t.shape)}")
    return Inputs(Yt, Ynp, E64, x0t, R, N, dtype, device, Et.device)


@dataclass(frozen=True)
class Normalized:
    """The problem rescaled by ``scale = ||E||_2``, with ``G = E_n^T E_n = V diag(s) V^T``."""

    scale: float
    lam_n: float  #: ``lam / scale^2``
    mu0: float  #: the starting ADMM penalty
    G64: torch.Tensor  #: (R, R) float64
    s64: torch.Tensor  #: (R,) float64 eigenvalues, ascending, >= 0
    s: torch.Tensor  #: (R, 1) eigenvalues in the working dtype
    V: torch.Tensor  #: (R, R) eigenvectors in the working dtype
    VT: torch.Tensor  #: ``V^T``, contiguous
    Vt1: torch.Tensor  #: (R, 1) ``V^T 1``
    EbT: torch.Tensor  #: (R, bands) ``(E_n / scale)^T``: ``EbT @ y`` is the data term ``E_n^T y_n``
    EbT_np: np.ndarray  #: the same in float64, for numpy's BLAS

    def residual_tol(self, tol: float) -> float:
        """The per-pixel residual tolerance ``tol sqrt(R) / cond(E^T E)`` (cond capped to [1, 1e6]).

        The ADMM residuals bound the abundance error only up to the smallest eigenvalue of ``E^T E``,
        so an ill-conditioned problem needs smaller residuals.
        """
        s64 = self.s64
        cond_scale = float(s64[0] / s64[-1]) if float(s64[-1]) > 0 else 0.0
        return tol * math.sqrt(s64.numel()) * min(1.0, max(cond_scale, 1e-6))


def normalize_problem(E64: torch.Tensor, *, lam: float, mu: float | None, normalize: bool,
                      dtype: torch.dtype) -> Normalized:
    """Rescale by ``||E||_2`` (``normalize``) and decompose ``E^T E`` (``ValueError`` for a zero ``E``
    or ``mu <= 0``)."""
    scale = float(torch.linalg.matrix_norm(E64, ord=2)) if normalize else 1.0
    if scale == 0:
        raise ValueError("the endmember matrix is all zeros")
    En64 = E64 / scale
    lam_n = float(lam) / scale**2
    mu0 = 0.01 if mu is None else float(mu)
    if not (mu0 > 0):
        raise ValueError(f"mu must be > 0, got {mu0}")
    R = E64.shape[1]
    G64 = En64.T @ En64
    s64, V64 = torch.linalg.eigh(G64)
    s64 = s64.clamp_min(0)
    V = V64.to(dtype)
    Vt1 = (V64.T @ torch.ones(R, dtype=torch.float64, device=E64.device)).to(dtype).unsqueeze(1)
    return Normalized(
        scale=scale, lam_n=lam_n, mu0=mu0, G64=G64, s64=s64, s=s64.to(dtype).unsqueeze(1), V=V,
        VT=V.T.contiguous(), Vt1=Vt1, EbT=(En64 / scale).T.to(dtype).contiguous(),
        EbT_np=(En64 / scale).T.contiguous().cpu().numpy())


def data_term(inp: Inputs, nrm: Normalized, bdt: torch.dtype, batch_pixels: int
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``E_n^T y_n`` of every pixel, (R, N) in ``bdt``, and the indices of the invalid pixels (or None).

    The invalid pixels' columns hold the stand-in data term (module notes).
    """
    R, N, Ynp = inp.R, inp.N, inp.Ynp
    np_dt = {torch.float32: np.float32, torch.float64: np.float64}.get(bdt)
    if Ynp is not None and inp.dev.type == "cpu" and np_dt is not None:
        Eb = nrm.EbT_np.astype(np_dt)
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
            src = inp.Yt[:, s0:s0 + batch_pixels] if Ynp is None else torch.as_tensor(  # type: ignore[index]
                np.ascontiguousarray(Ynp[:, s0:s0 + batch_pixels]), device=inp.device)
            parts_b.append(nrm.EbT.to(bdt) @ src.to(bdt))
        b_all = torch.cat(parts_b, 1) if parts_b else torch.empty((R, 0), dtype=bdt, device=inp.dev)
        finite = torch.isfinite(b_all).all(0)
    bad: torch.Tensor | None = None
    if not bool(finite.all()):
        bad = (~finite).nonzero()[:, 0].to(inp.dev)
        stand_in = (nrm.G64 @ torch.full((R, 1), 1.0 / R, dtype=torch.float64, device=inp.dev)).to(bdt)
        b_all.index_copy_(1, bad, stand_in.expand(R, bad.numel()))
    return b_all, bad
