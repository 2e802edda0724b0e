"""DEQ-Unmix: abundances as the equilibrium of a learned projected-gradient operator.

The abundances ``A`` of an image are the fixed point of::

    A = P( A - eta * G_theta(A; Y, M) ),      G_theta = M^T (M A - Y) + C_theta([A, eta M^T (M A - Y)]) / eta

where ``M`` (bands x R) are the endmembers, ``P`` the exact Euclidean projection of every pixel onto the
probability simplex (ANC + ASC), ``eta = step / ||M||_2^2`` and ``C_theta`` a small spectral-spatial CNN
(3x3 convolutions) whose last layer starts at zero. Untrained, the operator is therefore exactly projected
gradient descent on ``1/2 ||Y - M A||^2``, whose fixed point is the FCLS solution.

Options (all off by default, so the untrained default model stays projected gradient descent):
``precondition=delta`` replaces ``eta`` by a damped Newton matrix restricted to the sum-to-zero subspace
(fast, well-conditioned solves: the Jasper Ridge evidence in docs/deq.md uses ``delta = 1e-3``),
``projection="scaled"`` solves for scaled abundances ``z = s a >= 0`` (the scaled linear mixing model
``y = s M a``, ``s > 0`` a per-pixel brightness) and returns ``a = z / sum(z)``,
``y_linear`` adds a learned ``R x bands`` shift ``V Y`` of the data term's target, ``kernel_size=1`` makes
the CNN pixel-wise, and ``jac_reg`` in :meth:`DEQUnmix.fit_scene` / :meth:`DEQUnmix.fit` adds the
Jacobian (Frobenius, Hutchinson) penalty of Bai et al. (2021).

The fixed point is found by Anderson acceleration started from FCLS
(:mod:`xr_unmix.solvers.fixed_point`); gradients use implicit differentiation (memory of one operator
application, whatever the number of iterations), or the Jacobian-free approximation, or -- for the memory
comparison only -- backpropagation through every unrolled iteration.

Training: :meth:`DEQUnmix.fit_scene` (unsupervised, per scene: spectral angle + alpha * MSE between
``Y`` and ``M A``, AdamW, endmembers learnable with their own learning rate and kept >= 0, the
best-objective state kept) and :meth:`DEQUnmix.fit` (supervised: labelled pixels, or tiles with NaN for
unlabelled pixels).
"""

from __future__ import annotations

import copy
import math
import threading
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConvergenceWarning
from ..solvers.fixed_point import BackwardStats, FixedPointInfo, deq_fixed_point
from ..solvers.sunsal import fcls as _fcls
from ..solvers.sunsal import project_simplex
from ..tiling import TileSpec
from .base import UnmixModel
from .registry import register_model

#: Tile overlap used by ``cube.unmix.deq`` when none is given: measured by recipes/deq_seams.py
#: (max |tiled - whole| on Jasper Ridge with a trained model, blended tiles; see docs/deq.md).
DEFAULT_HALO = 16
#: Most fixed-point (and backward) iterations a model may be configured with: a bound on the work of
#: one solve, whatever a (tampered) config says.
MAX_ITER = 10_000


def _check_iterations(max_iter: int, tol: float, b_max_iter: int, b_tol: float) -> None:
    """Refuse solver settings without a bound on the work (``max_iter=1e9``) or with no meaning."""
    if not (1 <= max_iter <= MAX_ITER and 1 <= b_max_iter <= MAX_ITER):
        raise ValueError(f"max_iter and b_max_iter must be in [1, {MAX_ITER}], got {max_iter} and "
                         f"{b_max_iter}")
    if not (math.isfinite(tol) and tol >= 0 and math.isfinite(b_tol) and b_tol >= 0):
        raise ValueError(f"tol and b_tol must be finite and >= 0, got {tol} and {b_tol}")


class _CNN(nn.Module):
    """``layers`` 3x3 convolutions ``2R -> hidden -> ... -> R`` (replicate padding), last one zero."""

    def __init__(self, r: int, hidden: int, layers: int, kernel_size: int = 3, extra: int = 0) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"cnn_layers must be >= 1, got {layers}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        pad = kernel_size // 2
        chans = [2 * r + extra] + [hidden] * (layers - 1) + [r]
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], kernel_size, padding=pad, padding_mode="replicate")
            for i in range(layers)
        )
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = torch.nn.functional.leaky_relu(x, 0.1)
        return x


@register_model
class DEQUnmix(UnmixModel):
    """Deep-equilibrium unmixing network (a spatial model: tiles need a halo and blending).

    Parameters
    ----------
    n_bands, n_endmembers : int
    endmember_names : list of str, optional
    wavelengths : list of float, optional
        nm, one per band.
    hidden : int
        Channels of the CNN's hidden layers.
    cnn_layers : int
        Number of convolutions in ``C_theta``.
    kernel_size : int
        Their (odd) size: 3 (default; the receptive field grows by ``cnn_layers`` px per iteration) or 1
        (a pixel-wise operator: no spatial context, no seams).
    use_cnn : bool
        ``False`` drops ``C_theta``: the operator is the analytic projected gradient (the ablation).
    y_features : int
        If > 0, ``C_theta`` also sees a learned linear projection of the spectra (a 1x1 convolution
        ``bands -> y_features``, computed once per solve), not just ``M^T Y`` through the gradient: useful
        for supervised training, where the labels may depend on more of the spectrum than ``M^T Y``.
    y_linear : bool
        Adds a learned ``R x bands`` matrix ``V`` (zero at the start, so the untrained model is still
        projected gradient descent) that shifts the data term's target: the gradient becomes
        ``M^T M (A - V Y) - M^T Y``, whose unconstrained minimiser is the least-squares abundances plus
        ``V Y``. The operator then sees the whole spectrum, as U-ADMM's learned ``W`` does (for supervised
        training: labels that are not the least-squares abundances of the given endmembers).
    y_subspace : int
        With ``y_linear``: ``V = Vc @ basis``, and the CNN's ``y_features`` read the same whitened
        coordinates ``basis @ y`` instead of the raw spectra; ``basis`` = the whitened top-``y_subspace`` right singular
        vectors of the training spectra (set by :meth:`fit`, or :meth:`set_spectral_subspace`), so that
        only ``R x y_subspace`` coefficients learn, on well-conditioned coordinates. ``0``: a full ``V``.
    projection : {"simplex", "scaled"}
        ``"simplex"`` (default): ``P`` is the exact Euclidean projection onto the probability simplex (ANC +
        ASC at every iteration). ``"scaled"``: the scaled linear mixing model ``y = s M a`` with a
        per-pixel scale ``s > 0`` (illumination, topography): the equilibrium is taken over ``z = s a``
        with ``P`` the projection onto the non-negative orthant (ANC only; untrained, projected gradient
        descent for non-negative least squares), and the abundances returned are ``a = z / sum_r z_r``
        -- on the simplex exactly, invariant to the pixel's brightness, as U-ADMM-AENet's normalised
        output. Unsupervised training reconstructs ``M z``. Measured on Jasper Ridge (docs/deq.md): NNLS
        + normalisation has test RMSE 0.051 against FCLS's 0.085 with the reference endmembers, and the
        supervised DEQ-Unmix falls from ~0.019 to ~0.011.
    precondition : float
        ``0`` (default): the data step is ``eta * grad`` (projected gradient descent). ``delta > 0``: the
        step is ``K grad`` with ``K`` the inverse of ``M^T M + delta ||M||_2^2 I`` restricted to the
        sum-to-zero subspace (a damped, constrained Newton step: ``K 1 = 0``, so the sum-to-one constraint
        is kept before the projection, and an interior fixed point is still a KKT point of the data
        term); with ``projection="scaled"`` (no sum constraint on ``z``) ``K`` is the plain inverse.
        Its linear part contracts by ``delta / (lambda_i / ||M||_2^2 + delta)`` per mode instead of
        PGD's ``1 - lambda_i / ||M||_2^2`` (~0.999 for Jasper's VCA endmembers, Gram condition number
        ~1400): fast solves, hence tiles that agree with the whole scene. At pixels with an abundance at
        0 the fixed point of the untrained operator can differ from FCLS.
    metric : bool
        Adds a learned symmetric ``R x R`` matrix ``Lambda`` (zero at the start, so the untrained model
        is unchanged) to the data term's Gram matrix: the gradient becomes ``(M^T M + Lambda)(A - V Y) -
        M^T Y``, i.e. a learned Tikhonov term ``1/2 (A - V Y)^T Lambda (A - V Y)``, whose interior fixed
        point ``(M^T M + Lambda)^-1 M^T Y + V Y`` is a regularised least-squares estimate (``M^T M`` of
        Jasper's endmembers has condition number ~1700: the plain least-squares part amplifies noise).
        The step (``eta`` or the preconditioner) uses ``M^T M + Lambda`` too. ``Lambda`` is not
        constrained to keep ``M^T M + Lambda`` positive definite: a trained model whose solves stop
        converging warns (:class:`~xr_unmix.errors.ConvergenceWarning`) and records it in the attrs.
    step : float
        ``eta * ||M||_2^2`` (1 = the classical ``1/L`` step of projected gradient descent).
    max_iter, tol : int, float
        Forward Anderson solve: iteration limit (at most :data:`MAX_ITER`) and relative-residual
        tolerance (>= 0).
    anderson_m, anderson_lam, anderson_beta : int, float, float
        Anderson history, relative regularisation and damping.
    backward : {"implicit", "jfb", "unrolled"}
        Gradient: implicit differentiation, Jacobian-free, or backprop through ``max_iter`` unrolled
        plain iterations (memory grows with iterations; for comparisons).
    b_max_iter, b_tol : int, float
        Backward (implicit) solve: iteration limit (at most :data:`MAX_ITER`) and tolerance.
    learn_endmembers : bool
        Train the endmembers (kept >= 0) or keep them fixed.
    fcls_iter : int
        ADMM iterations of the FCLS start.
    halo : int
        Tile overlap for ``cube.unmix.deq`` (see :data:`DEFAULT_HALO`).
    """

    def __init__(
        self,
        n_bands: int,
        n_endmembers: int,
        endmember_names: list[str] | None = None,
        wavelengths: list[float] | None = None,
        *,
        hidden: int = 16,
        cnn_layers: int = 3,
        kernel_size: int = 3,
        use_cnn: bool = True,
        y_features: int = 0,
        y_linear: bool = False,
        y_subspace: int = 0,
        precondition: float = 0.0,
        projection: str = "simplex",
        metric: bool = False,
        step: float = 1.0,
        max_iter: int = 100,
        tol: float = 1e-4,
        anderson_m: int = 5,
        anderson_lam: float = 1e-4,
        anderson_beta: float = 1.0,
        backward: str = "implicit",
        b_max_iter: int = 10,
        b_tol: float = 1e-4,
        learn_endmembers: bool = True,
        fcls_iter: int = 500,
        halo: int = DEFAULT_HALO,
    ) -> None:
        super().__init__(n_bands, n_endmembers, endmember_names, wavelengths)
        if backward not in ("implicit", "jfb", "unrolled"):
            raise ValueError(f"backward must be 'implicit', 'jfb' or 'unrolled', got {backward!r}")
        if not step > 0:
            raise ValueError(f"step must be > 0, got {step}")
        if projection not in ("simplex", "scaled"):
            raise ValueError(f"projection must be 'simplex' or 'scaled', got {projection!r}")
        if not precondition >= 0:
            raise ValueError(f"precondition must be >= 0, got {precondition}")
        _check_iterations(max_iter, tol, b_max_iter, b_tol)
        self.config = dict(
            hidden=int(hidden), cnn_layers=int(cnn_layers), kernel_size=int(kernel_size),
            use_cnn=bool(use_cnn),
            y_features=int(y_features), y_linear=bool(y_linear),
            y_subspace=int(y_subspace), precondition=float(precondition), projection=str(projection),
            metric=bool(metric),
            step=float(step),
            max_iter=int(max_iter), tol=float(tol), anderson_m=int(anderson_m),
            anderson_lam=float(anderson_lam), anderson_beta=float(anderson_beta), backward=backward,
            b_max_iter=int(b_max_iter), b_tol=float(b_tol), learn_endmembers=bool(learn_endmembers),
            fcls_iter=int(fcls_iter), halo=int(halo),
        )
        self.E = nn.Parameter(torch.zeros(self.n_bands, self.n_endmembers),
                              requires_grad=bool(learn_endmembers))
        self.cnn = (_CNN(self.n_endmembers, int(hidden), int(cnn_layers), int(kernel_size),
                         extra=int(y_features)) if use_cnn else None)
        # learned linear shift of the data term's target, zero at the start (see ``y_linear``)
        k = int(y_subspace)
        if k < 0 or k > self.n_bands:
            raise ValueError(f"y_subspace must be in [0, n_bands], got {y_subspace}")
        if k:  # whitened k-dim basis of the training spectra (set by fit)
            self.register_buffer("V_basis", torch.eye(k, self.n_bands))
        else:
            self.V_basis = None
        if y_linear and k:  # V = Vc @ basis: coefficients on the whitened basis
            self.V = None
            self.Vc = nn.Parameter(torch.zeros(self.n_endmembers, k))
        else:
            self.V = (nn.Parameter(torch.zeros(self.n_endmembers, self.n_bands)) if y_linear else None)
            self.Vc = None
        # learned R x R metric of the data term (zero at the start: see ``metric``)
        self.Lam = nn.Parameter(torch.zeros(self.n_endmembers, self.n_endmembers)) if metric else None
        # the CNN's learned spectral features: from the whitened coordinates when y_subspace is set
        self.y_proj = (nn.Conv2d(k or self.n_bands, int(y_features), 1)
                       if use_cnn and y_features > 0 else None)
        self.backward_stats = BackwardStats()
        self._lock = threading.Lock()
        self.reset_solve_stats()

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_endmembers(cls, E: Any, *, seed: int | None = None, **kwargs: Any) -> DEQUnmix:
        """Build an untrained model (= projected gradient descent on the data term) around ``E``.

        Parameters
        ----------
        E : DataArray (band, endmember) or array (bands, R)
            Endmember spectra, reflectance; negative values are clipped to 0. Names and wavelengths
            are taken from a DataArray's ``endmember`` and ``wavelength`` coordinates.
        seed : int, optional
            Seeds the CNN's (non-zero) hidden-layer initialisation.
        **kwargs
            Any constructor option (``max_iter``, ``tol``, ``learn_endmembers``, ``hidden``, ...).
        """
        from .._cube import as_endmembers

        Eda = as_endmembers(E)
        names = [str(n) for n in Eda.endmember.values]
        wl = None
        if "wavelength" in Eda.coords and Eda.coords["wavelength"].dims == ("band",):
            wl = [float(w) for w in Eda.coords["wavelength"].values]
        values = np.clip(np.asarray(Eda.values, dtype=np.float64), 0, None)
        if not (values.sum(0) > 0).all():
            raise ValueError("an endmember is all zeros (after clipping negatives)")
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = cls(values.shape[0], values.shape[1], names, wl, **kwargs)
        else:
            model = cls(values.shape[0], values.shape[1], names, wl, **kwargs)
        with torch.no_grad():
            model.E.copy_(torch.as_tensor(values, dtype=model.E.dtype))
        return model

    @classmethod
    def _from_config(cls, config: dict[str, Any]) -> DEQUnmix:
        c = dict(config)
        base = {k: c.pop(k) for k in ("n_bands", "n_endmembers", "endmember_names", "wavelengths")}
        return cls(**base, **c)

    # -- the operator ---------------------------------------------------------------------------------
    @property
    def tile_spec(self) -> TileSpec:
        """Spatial CNN (``kernel_size`` 3): tiles overlap by the configured ``halo`` and are blended,
        the receptive field growing with every iteration. Pixel-wise operator (``kernel_size=1`` or no
        CNN): no halo, no blending (each pixel's fixed point is its own; tiles agree with the whole
        scene to the solve's tolerance)."""
        c = self.config
        if not c["use_cnn"] or c["kernel_size"] == 1:
            return TileSpec()
        return TileSpec.spatial(int(c["halo"]), blend=True)

    def endmember_matrix(self) -> torch.Tensor:
        """``(bands, R)`` endmembers, clipped at 0."""
        return self.E.clamp_min(0)

    def gram(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """The data term's ``(R, R)`` matrix: ``E^T E``, plus the learned symmetric ``Lambda`` of
        ``metric``."""
        E = self.endmember_matrix() if E is None else E
        G = E.T @ E
        if self.Lam is not None:
            G = G + 0.5 * (self.Lam + self.Lam.T)
        return G

    def step_size(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """``eta = step / ||E||_2^2`` (``||E^T E + Lambda||_2`` with ``metric``; no gradient), 0-d."""
        E = self.endmember_matrix() if E is None else E
        with torch.no_grad():
            if self.Lam is None:
                L = torch.linalg.matrix_norm(E.detach().double(), ord=2) ** 2
            else:
                L = torch.linalg.matrix_norm(self.gram(E.detach()).detach().double(), ord=2)
        return (self.config["step"] / L.clamp_min(1e-30)).to(E.dtype)

    def operator(self, A: torch.Tensor, Y: torch.Tensor, E: torch.Tensor | None = None,
                 eta: torch.Tensor | None = None) -> torch.Tensor:
        """One application ``P(A - eta * G_theta(A; Y, E))``.

        Parameters
        ----------
        A : Tensor (B, R, H, W)
        Y : Tensor (B, bands, H, W)
        """
        E = self.endmember_matrix() if E is None else E
        return self._map(Y, E, eta)(A)

    def _update(self, A: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor,
                feats: torch.Tensor | None) -> torch.Tensor:
        upd = eta * grad if eta.ndim == 0 else torch.einsum("rs,nshw->nrhw", eta, grad)
        if self.cnn is not None:
            x = [A, upd] if feats is None else [A, upd, feats]
            upd = upd + self.cnn(torch.cat(x, dim=1))
        if self.config["projection"] == "scaled":
            return (A - upd).clamp_min(0)
        return project_simplex(A - upd, dim=1)

    def abundances_from_state(self, Z: torch.Tensor) -> torch.Tensor:
        """Abundances from a fixed-point state ``(B, R, ...)``: the state itself (``"simplex"``), or
        ``z / sum_r z_r`` (``"scaled"``; a pixel with ``z = 0`` gets ``1 / R``)."""
        if self.config["projection"] != "scaled":
            return Z
        eps = 1e-8
        return (Z + eps / Z.shape[1]) / (Z.sum(1, keepdim=True) + eps)

    def target_shift(self) -> torch.Tensor | None:
        """The learned ``(R, bands)`` matrix ``V`` of ``y_linear`` (``None`` without it)."""
        if self.Vc is not None:
            return self.Vc @ self.V_basis
        return self.V

    def _subspace_trained(self) -> bool:
        """Whether what reads the whitened basis has left its start (then the basis stays as it is)."""
        vc = self.Vc is not None and bool(self.Vc.detach().any())
        last = self.cnn.convs[-1].weight.detach().any() if self.cnn is not None else False
        return vc or bool(last)

    def set_spectral_subspace(self, spectra: Any) -> None:
        """Set the whitened basis of ``y_subspace``: the top-k right singular vectors of ``spectra``
        ``(n, bands)``, each divided by its singular value / sqrt(n) (unit-variance coordinates). Done by
        :meth:`fit` on its training spectra while ``Vc`` is still zero (untrained)."""
        if self.V_basis is None:
            raise ValueError("set_spectral_subspace needs y_subspace > 0")
        X = torch.as_tensor(np.asarray(spectra, dtype=np.float64)).reshape(-1, self.n_bands)
        _, S, Vh = torch.linalg.svd(X, full_matrices=False)
        k = self.V_basis.shape[0]
        scale = (S[:k] / math.sqrt(X.shape[0])).clamp_min(1e-12)
        with torch.no_grad():
            self.V_basis.copy_((Vh[:k] / scale[:, None]).to(self.V_basis.dtype))

    def step_matrix(self, E: torch.Tensor | None = None) -> torch.Tensor:
        """The ``(R, R)`` matrix that multiplies the data-term gradient in one step.

        ``eta I`` for projected gradient descent (``precondition=0``); otherwise ``step * K`` with ``K`` the
        damped constrained Newton matrix (see ``precondition``), differentiable in ``E``.
        """
        E = self.endmember_matrix() if E is None else E
        eta = self.step_size(E)
        R = self.n_endmembers
        d = self.config["precondition"]
        scaled = self.config["projection"] == "scaled"
        if d <= 0 or (R < 2 and not scaled):
            return eta * torch.eye(R, dtype=E.dtype, device=E.device)
        G = self.gram(E).double()
        lmax = 1.0 / (eta.double() / self.config["step"])  # ||E||_2^2 (no gradient)
        eye = torch.eye(R, dtype=torch.float64, device=E.device)
        if scaled:  # no sum constraint on z = s a: the plain damped Newton matrix
            return (self.config["step"] * torch.linalg.inv(G + d * lmax * eye)).to(E.dtype)
        # orthonormal basis of the sum-to-zero subspace
        Q = eye - 1.0 / R
        Z = torch.linalg.qr(Q[:, : R - 1])[0]
        Hz = Z.T @ (G + d * lmax * eye) @ Z
        K = Z @ torch.linalg.solve(Hz, Z.T)
        return (self.config["step"] * K).to(E.dtype)

    def _map(self, Y: torch.Tensor, E: torch.Tensor, eta: torch.Tensor | None = None) -> Any:
        if eta is None:  # a scalar step, or the (R, R) preconditioned one
            eta = self.step_matrix(E) if self.config["precondition"] > 0 else self.step_size(E)
        EtE = self.gram(E)
        EtY = torch.einsum("br,nbhw->nrhw", E, Y)
        V = self.target_shift()
        if V is not None:
            EtY = EtY + torch.einsum("rs,nshw->nrhw", EtE, torch.einsum("rb,nbhw->nrhw", V, Y))
        feats = None
        if self.y_proj is not None:
            Yf = Y if self.V_basis is None else torch.einsum("kb,nbhw->nkhw", self.V_basis, Y)
            feats = self.y_proj(Yf)

        def f(A: torch.Tensor) -> torch.Tensor:
            return self._update(A, torch.einsum("rs,nshw->nrhw", EtE, A) - EtY, eta, feats)

        return f

    def init_abundances(self, Y: torch.Tensor) -> torch.Tensor:
        """FCLS abundances ``(B, R, H, W)`` for ``Y`` ``(B, bands, H, W)`` with the current endmembers."""
        B, b, H, W = Y.shape
        with torch.no_grad():
            E = self.endmember_matrix().detach()
            flat = Y.detach().permute(1, 0, 2, 3).reshape(b, B * H * W)
            A = _fcls(flat, E, max_iter=self.config["fcls_iter"], tol=1e-6, warn=False,
                      dtype=E.dtype, device=E.device)
        return A.reshape(self.n_endmembers, B, H, W).permute(1, 0, 2, 3).contiguous()

    def forward(self, Y: torch.Tensor, A0: torch.Tensor | None = None, *,
                max_iter: int | None = None, tol: float | None = None,
                solver: str = "anderson", warn: bool = True) -> torch.Tensor:
        """Abundances at equilibrium.

        Parameters
        ----------
        Y : Tensor (B, bands, H, W), or (n_pixels, bands) (treated as n 1x1 images)
            Finite reflectance.
        A0 : Tensor, same layout with R channels, optional
            Start of the solve (default FCLS); a state of :meth:`equilibrium` (for ``projection="scaled"``
            the scaled abundances ``z``).
        max_iter, tol : optional
            Override the configured forward-solve settings.
        solver : {"anderson", "plain"}
        warn : bool
            Emit a :class:`~xr_unmix.errors.ConvergenceWarning` when the solve stops above ``tol``.

        Returns
        -------
        Tensor (B, R, H, W) or (n_pixels, R): non-negative, summing to one over R. ``self.last_info``
        holds the solve's :class:`~xr_unmix.solvers.fixed_point.FixedPointInfo`.
        """
        Z = self.equilibrium(Y, A0, max_iter=max_iter, tol=tol, solver=solver, warn=warn)
        return self.abundances_from_state(Z)

    def equilibrium(self, Y: torch.Tensor, A0: torch.Tensor | None = None, *,
                    max_iter: int | None = None, tol: float | None = None,
                    solver: str = "anderson", warn: bool = True) -> torch.Tensor:
        """The fixed point of the operator (the abundances for ``projection="simplex"``, the scaled
        abundances ``z = s a`` for ``"scaled"``); arguments and layout as :meth:`forward`."""
        flat = Y.ndim == 2
        if flat:
            Y = Y[:, :, None, None]
            if A0 is not None:
                A0 = A0[:, :, None, None]
        if Y.ndim != 4:
            raise ValueError(f"Y must be (B, bands, H, W) or (n_pixels, bands); got {tuple(Y.shape)}")
        self.check_bands(Y.shape[1])
        E = self.endmember_matrix()
        if A0 is None:
            A0 = self.init_abundances(Y)
        c = self.config
        mi = int(c["max_iter"] if max_iter is None else max_iter)
        tl = float(c["tol"] if tol is None else tol)
        skw: dict[str, float | int] = {"max_iter": mi, "tol": tl}
        if solver == "anderson":
            skw.update(m=c["anderson_m"], lam=c["anderson_lam"], beta=c["anderson_beta"])
        A, info = deq_fixed_point(
            self._map(Y, E), A0, solver=solver, solver_kwargs=skw,  # type: ignore[arg-type]
            backward=c["backward"], b_kwargs={"max_iter": c["b_max_iter"], "tol": c["b_tol"]},
            backward_stats=self.backward_stats,
        )
        self.last_info = info
        self._record(info, warn and c["backward"] != "unrolled")
        return A[:, :, 0, 0] if flat else A

    def unmix_image(self, Y: torch.Tensor) -> torch.Tensor:
        """Abundances ``(R, H, W)`` of one finite image ``(bands, H, W)``."""
        if Y.ndim != 3:
            raise ValueError(f"Y must be (bands, H, W); got {tuple(Y.shape)}")
        return self(Y[None])[0]

    # -- contraction: Jacobian penalty and spectral radius ---------------------------------------------
    def jacobian_penalty(self, Y: torch.Tensor, A: torch.Tensor, n_samples: int = 1,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Hutchinson estimate of ``||J||_F^2 / d`` at ``A`` (``J`` = the operator's Jacobian in ``A``).

        ``E_v ||v^T J||^2 = ||J||_F^2`` for ``v ~ N(0, I)``; divided by ``d = A.numel()`` it is the mean
        squared singular value. Differentiable in the parameters (double backward), for the contraction-
        promoting regulariser of Bai et al. (2021, "Stabilizing Equilibrium Models by Jacobian
        Regularization"). ``A`` is detached first (the penalty is taken at that point).
        """
        z = A.detach().requires_grad_()
        fz = self._map(Y, self.endmember_matrix())(z)
        tot = fz.new_zeros(())
        for _ in range(int(n_samples)):
            v = torch.randn(fz.shape, generator=generator, dtype=fz.dtype).to(fz.device)
            (vjp,) = torch.autograd.grad(fz, z, v, create_graph=True)
            tot = tot + vjp.pow(2).sum() / vjp.numel()
        return tot / int(n_samples)

    @torch.no_grad()
    def spectral_radius(self, Y: torch.Tensor, A: torch.Tensor | None = None, iters: int = 50,
                        seed: int = 0) -> float:
        """Power-iteration estimate of the spectral radius of the operator's Jacobian at ``A``.

        ``A`` (a state of :meth:`equilibrium`) defaults to the equilibrium of ``Y`` (``(B, bands, H,
        W)``). The Jacobian-vector products use the double-backward trick (no forward-mode AD needed). ``< 1`` is a local contraction; the
        closer to 1, the slower every solve (and the larger the error of a solve stopped early).
        """
        if A is None:
            A = self.equilibrium(Y, warn=False)
        f = self._map(Y, self.endmember_matrix())
        g = torch.Generator().manual_seed(int(seed))
        u = torch.randn(A.shape, generator=g, dtype=A.dtype).to(A.device)
        u = u / u.norm()
        lam = 0.0
        with torch.enable_grad():
            z = A.detach().requires_grad_()
            fz = f(z)
            v = torch.zeros_like(fz, requires_grad=True)
            (vjp,) = torch.autograd.grad(fz, z, v, create_graph=True)  # J^T v, linear in v
            for _ in range(int(iters)):
                (Ju,) = torch.autograd.grad(vjp, v, u, retain_graph=True)  # J u
                lam = float(Ju.norm())
                if lam == 0:
                    break
                u = Ju / lam
        return lam

    # -- convergence records --------------------------------------------------------------------------
    @property
    def solve_stats(self) -> dict[str, Any]:
        """``n_solves``, ``n_unconverged``, ``max_residual``, ``max_iterations`` of the forward solves
        since :meth:`reset_solve_stats` (this process)."""
        return self._solve_stats

    def reset_solve_stats(self) -> None:
        """Clear :attr:`solve_stats`."""
        with self._lock:
            self._solve_stats: dict[str, Any] = {"n_solves": 0, "n_unconverged": 0,
                                                "max_residual": 0.0, "max_iterations": 0}

    def _record(self, info: FixedPointInfo, warn: bool) -> None:
        res = info.max_residual
        with self._lock:
            s = self._solve_stats
            s["n_solves"] += 1
            s["n_unconverged"] += int(not info.all_converged)
            s["max_residual"] = max(float(s["max_residual"]), res)
            s["max_iterations"] = max(int(s["max_iterations"]), info.n_iter)
        if warn and not info.all_converged and not torch.is_grad_enabled():
            from .._warn import user_stacklevel

            warnings.warn(
                f"DEQUnmix: the fixed-point solve stopped after {info.n_iter} iterations with relative "
                f"residual {res:.3g} > tol={info.tol:g}; raise max_iter or loosen tol",
                ConvergenceWarning, stacklevel=user_stacklevel(),
            )

    # -- training -------------------------------------------------------------------------------------
    def _param_groups(self, lr: float, lr_endmembers: float, weight_decay: float) -> list[dict]:
        groups: list[dict[str, Any]] = []
        net = [p for n, p in self.named_parameters() if n != "E" and p.requires_grad]
        if net:
            groups.append({"params": net, "lr": lr, "weight_decay": weight_decay})
        if self.E.requires_grad:
            groups.append({"params": [self.E], "lr": lr_endmembers, "weight_decay": 0.0})
        if not groups:
            raise ValueError("nothing to train: no CNN (use_cnn=False) and fixed endmembers")
        return groups

    def _project_endmembers(self) -> None:
        with torch.no_grad():
            self.E.clamp_(min=0)

    def fit_scene(
        self,
        cube: Any,
        *,
        epochs: int = 200,
        seed: int | None = None,
        lr: float = 1e-3,
        lr_endmembers: float = 5e-3,
        alpha: float = 0.0,
        anchor: float = 1.0,
        weight_decay: float = 1e-4,
        max_pixels: int = 128 * 128,
        tile_size: int = 64,
        tiles_per_epoch: int = 4,
        train_max_iter: int | None = 10,
        keep_best: bool = True,
        jac_reg: float = 0.0,
        progress: bool | None = None,
    ) -> dict[str, Any]:
        """Unsupervised training on one scene (no labels).

        Loss: mean spectral angle between every valid pixel ``y`` and its reconstruction ``M a`` plus
        ``alpha`` times their squared error (summed over bands, averaged over pixels). AdamW; the
        endmembers (if learnable) have their own learning rate and are clipped to >= 0 after every step.
        A scene with at most ``max_pixels`` pixels is used whole every epoch (warm-started from the
        previous epoch's equilibrium); a larger one is sampled as ``tiles_per_epoch`` random
        ``tile_size`` tiles per epoch, and the objective is tracked on a fixed set of tiles.

        Divergence guard: the state with the lowest objective seen (the untrained model included, whose
        output is FCLS) is restored at the end (``keep_best``), and a non-finite loss restores it and
        halves the learning rates. So the returned model's objective is never worse than its start.

        Parameters
        ----------
        cube : DataArray (band, y, x) or array (bands, H, W)
            Reflectance; NaN in any band marks a pixel invalid (filled with 0, left out of the loss).
        epochs : int
        seed : int, optional
            Seeds the tile sampling (the CNN's initialisation is seeded in :meth:`from_endmembers`).
        lr, lr_endmembers, weight_decay, alpha : float
        anchor : float
            Weight of an optional endmember anchor: ``anchor * mean_r angle(M_r, M0_r)`` with ``M0`` the
            endmembers at the start (e.g. VCA's), which keeps the refined spectra from drifting in shape.
        max_pixels, tile_size, tiles_per_epoch : int
        train_max_iter : int, optional
            Forward iterations per epoch while training (default 10, as the paper; the solve is
            warm-started from the previous epoch's equilibrium, so iterations accumulate). ``None``: the
            configured ``max_iter``.
        keep_best : bool
        jac_reg : float
            Weight of the Jacobian penalty :meth:`jacobian_penalty` (``||J||_F^2 / d`` at the equilibrium,
            one Hutchinson sample per step) added to the training loss, not to the tracked objective:
            promotes a contractive operator, i.e. fast, accurate solves and tiles that agree with the
            whole scene. ``0``: off.
        progress : bool, optional
            tqdm bar (``None``: only on a terminal).

        Returns
        -------
        dict
            ``loss`` (objective per epoch, of the state before that epoch's step), ``residual`` (forward
            relative residual per epoch), ``iterations`` (forward iterations per epoch),
            ``backward_residual``, ``best_epoch`` (0 = the untrained start), ``best_loss``,
            ``initial_loss``, ``n_restarts``, ``time_s``.
        """
        from tqdm.auto import tqdm

        from .losses import spectral_angle_loss

        src = _cube_array(cube, self.n_bands)  # numpy, or a lazy dask array for a dask-backed cube
        dtype = self.E.dtype
        dev = self.E.device
        H, W = src.shape[1:]
        whole = H * W <= max_pixels
        gen = np.random.default_rng(seed)

        def load(a: int, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
            blk = np.asarray(src[:, a:a + h, b:b + w], dtype=np.float32)  # reads only this window
            ok = np.isfinite(blk).all(0)
            return (torch.as_tensor(np.where(ok[None], blk, 0.0), dtype=dtype, device=dev),
                    torch.as_tensor(ok, device=dev))

        def sample(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            th, tw = min(tile_size, H), min(tile_size, W)
            ys = gen.integers(0, H - th + 1, size=k)
            xs = gen.integers(0, W - tw + 1, size=k)
            tiles = [load(int(a), int(b), th, tw) for a, b in zip(ys, xs, strict=True)]
            return torch.stack([t[0] for t in tiles]), torch.stack([t[1] for t in tiles])

        def sample_valid(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            for _ in range(50):  # tiles of nodata only carry no signal: draw again
                Yb, Vb = sample(k)
                if bool(Vb.any()):
                    return Yb, Vb
            raise ValueError("50 random tile draws found no valid pixel; is the scene all nodata?")

        def objective(Yb: torch.Tensor, Vb: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
            # A: the equilibrium state (abundances, or the scaled abundances z of "scaled": M z = s M a)
            E = self.endmember_matrix()
            rec = torch.einsum("br,nrhw->nbhw", E, A)
            y = Yb.permute(0, 2, 3, 1)[Vb]
            r = rec.permute(0, 2, 3, 1)[Vb]
            obj = spectral_angle_loss(r, y) + alpha * (r - y).pow(2).sum(-1).mean()
            if anchor:
                obj = obj + anchor * spectral_angle_loss(E.T, E0.T)
            return obj

        E0 = self.endmember_matrix().detach().clone()

        if whole:
            Yt, Vt = load(0, 0, H, W)
            if not bool(Vt.any()):
                raise ValueError("the scene has no valid pixel")
            batch, vmask = Yt[None], Vt[None]
            eval_batch = None
        else:
            eval_batch = sample_valid(max(tiles_per_epoch, 4))
        opt = torch.optim.AdamW(self._param_groups(lr, lr_endmembers, weight_decay))
        mi = train_max_iter
        hist: dict[str, Any] = {"loss": [], "residual": [], "iterations": [], "backward_residual": [],
                                "jacobian": [], "n_restarts": 0}
        jgen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        best_state = copy.deepcopy(self.state_dict())
        best_loss = math.inf
        best_epoch = 0
        warm: torch.Tensor | None = None
        was_training = self.training
        self.train()
        t0 = time.perf_counter()
        bar = tqdm(range(epochs + 1), desc="DEQUnmix.fit_scene", unit="epoch",
                   disable=None if progress is None else not progress, leave=False)
        try:
            for epoch in bar:
                if not whole:
                    batch, vmask = sample_valid(tiles_per_epoch)
                    warm = None
                    with torch.no_grad():
                        ev = objective(eval_batch[0], eval_batch[1],
                                       self.equilibrium(eval_batch[0], max_iter=mi, warn=False))
                        ev_conv = self.last_info.all_converged
                A = self.equilibrium(batch, A0=warm, max_iter=mi, warn=False)
                info = self.last_info
                loss = objective(batch, vmask, A)
                value = float(loss.detach())
                if whole:
                    ev, ev_conv = loss.detach(), info.all_converged
                evf = float(ev)
                hist["loss"].append(value)
                hist["residual"].append(info.max_residual)
                hist["iterations"].append(info.n_iter)
                if epoch == 0:
                    hist["initial_loss"] = evf
                if not math.isfinite(value):
                    self.load_state_dict(best_state)
                    for g in opt.param_groups:
                        g["lr"] *= 0.5
                    hist["n_restarts"] += 1
                    warm = None
                    continue
                # the state before this epoch's step is eligible when its solve converged (or it is the
                # untrained start)
                if evf < best_loss and (ev_conv or epoch == 0 or info.max_residual < 10 * self.config["tol"]):
                    best_loss, best_epoch = evf, epoch
                    best_state = copy.deepcopy(self.state_dict())
                if epoch == epochs:
                    break
                opt.zero_grad(set_to_none=True)
                if jac_reg > 0:
                    pen = self.jacobian_penalty(batch, A, generator=jgen)
                    hist["jacobian"].append(float(pen.detach()))
                    loss = loss + jac_reg * pen
                loss.backward()
                opt.step()
                self._project_endmembers()
                hist["backward_residual"].append(self.backward_stats.last_residual)
                if whole:
                    warm = A.detach()
                bar.set_postfix({"loss": f"{value:.4g}", "res": f"{info.max_residual:.1e}"},
                                refresh=False)
        finally:
            bar.close()
            self.train(was_training)
        if keep_best:
            self.load_state_dict(best_state)
        hist.update(best_epoch=best_epoch, best_loss=best_loss, time_s=time.perf_counter() - t0,
                    epochs=epochs, seed=seed, whole_scene=whole)
        self.eval()
        return hist

    def fit(
        self,
        spectra: Any,
        abundances: Any,
        *,
        epochs: int = 200,
        batch_size: int = 64,
        lr: float = 1e-3,
        lr_endmembers: float = 0.0,
        weight_decay: float = 1e-4,
        seed: int | None = None,
        train_max_iter: int | None = 10,
        jac_reg: float = 0.0,
        progress: bool | None = None,
        optimizer: str = "adam",
        ridge: float = 0.0,
        schedule: str | None = None,
        solve_tol: float = 1e-6,
        solve_max_iter: int = 300,
        b_tol: float = 1e-8,
        b_max_iter: int = 200,
    ) -> dict[str, Any]:
        """Supervised training on labelled pixels or tiles.

        Parameters
        ----------
        spectra : array (n_pixels, bands) or (n_tiles, bands, h, w)
            Finite reflectance.
        abundances : array (n_pixels, R) or (n_tiles, R, h, w)
            Labels; in the tile form NaN marks an unlabelled pixel (it still feeds the spatial operator
            but not the loss).
        epochs, batch_size : int
            Passes over the rows / tiles, and rows / tiles per step.
        lr, lr_endmembers, weight_decay : float
            AdamW on the CNN; the endmembers are trained only when ``learn_endmembers`` and
            ``lr_endmembers > 0``.
        seed : int, optional
            Seeds the batch order.
        train_max_iter : int, optional
            Forward iterations while training.
        jac_reg : float
            Weight of the Jacobian penalty (as in :meth:`fit_scene`); ``0``: off.
        progress : bool, optional
        optimizer : {"adam", "lbfgs"}
            ``"adam"`` (default): AdamW on shuffled batches, ``epochs`` passes. ``"lbfgs"``: full-batch
            L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line search, history 50, one single ``step``
            call) for at most ``epochs`` iterations (``1.25 * epochs`` loss evaluations), ``lr`` its step
            scale (1 is the usual choice). Every evaluation solves the forward problem from FCLS to
            ``solve_tol`` (at most ``solve_max_iter`` iterations) and the implicit backward to ``b_tol``
            (at most ``b_max_iter``), so that the loss is a smooth function of the parameters and the
            gradient accurate enough for a line search; ``weight_decay`` becomes an L2 penalty
            ``weight_decay * ||theta||^2`` on the network parameters (all but ``V`` / ``Vc`` and the
            endmembers). ``batch_size``, ``train_max_iter``, ``jac_reg`` and ``seed`` play no part. Keep-
            best guard: the state with the lowest training objective (data loss + penalties) among the
            evaluations whose forward solve converged, the start included, is returned; a non-finite loss
            stops the run there.
        ridge : float
            Adds ``ridge * mean_i ||V y_i||^2`` over the training spectra (the mean squared target shift,
            as U-ADMM-AENet's ridge on ``W - W0``; with ``y_subspace`` close to ``ridge * ||Vc||^2``).
            ``0``: off. Needs ``y_linear``.
        schedule : {None, "cosine"}
            Learning-rate schedule of the Adam path: constant ``lr`` (default), or cosine annealing from
            ``lr`` to 0 over ``epochs`` (as U-ADMM-AENet's ``fit``): the last epochs take small steps, so
            the returned state depends less on where a noisy full-lr trajectory happens to stop.
        solve_tol, solve_max_iter, b_tol, b_max_iter : float, int
            Forward / backward solve settings of ``optimizer="lbfgs"`` (the Adam path uses the model's).

        Returns
        -------
        dict
            ``loss`` (mean squared abundance error per epoch, summed over endmembers; with ``"lbfgs"``, of
            every loss evaluation), ``residual`` (worst forward residual per epoch / evaluation),
            ``time_s``, ``best_epoch`` (the returned state: lowest epoch loss -- with one full batch per
            epoch the state whose loss that is, i.e. before that epoch's step, ``best_epoch=1`` being the
            start; with mini-batches, the state at the end of that epoch; with ``"lbfgs"``, the index
            of the evaluation, 0 = the start), ``best_loss``; with ``"lbfgs"`` also ``objective`` (loss +
            penalties per evaluation) and ``optimizer``.
        """
        if optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
        if ridge and self.target_shift() is None:
            raise ValueError("ridge needs y_linear=True")
        if not ridge >= 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        if schedule not in (None, "cosine"):
            raise ValueError(f"schedule must be None or 'cosine', got {schedule!r}")
        if optimizer == "lbfgs" and schedule is not None:
            raise ValueError("schedule is not supported with optimizer='lbfgs'")
        from tqdm.auto import tqdm

        from ._train import as_tensor, check_pairs

        dtype = self.E.dtype
        dev = self.E.device
        Ya = np.asarray(getattr(spectra, "values", spectra))
        if Ya.ndim == 2:
            Y, A = check_pairs(spectra, abundances, n_bands=self.n_bands, n_endmembers=self.n_endmembers,
                               dtype=dtype, device=dev)
            M = torch.ones(A.shape[0], dtype=torch.bool, device=dev)
        elif Ya.ndim == 4:
            Y = as_tensor(spectra, "spectra", dtype, dev)
            A = as_tensor(abundances, "abundances", dtype, dev)
            if Y.shape[1] != self.n_bands or A.shape[1] != self.n_endmembers or \
                    Y.shape[0] != A.shape[0] or Y.shape[2:] != A.shape[2:]:
                raise ValueError(f"tiles must be (n, {self.n_bands}, h, w) and labels "
                                 f"(n, {self.n_endmembers}, h, w); got {tuple(Y.shape)}, {tuple(A.shape)}")
            if not torch.isfinite(Y).all():
                raise ValueError("spectra contain NaN/inf; fill invalid pixels first")
            M = torch.isfinite(A).all(1)
            if not M.any():
                raise ValueError("no labelled pixel (every label is NaN)")
            A = torch.nan_to_num(A)
        else:
            raise ValueError(f"spectra must be (n_pixels, bands) or (n_tiles, bands, h, w); got {Ya.shape}")
        if self.V_basis is not None and not self._subspace_trained():
            # untrained: whitened basis of the training spectra (the labelled pixels)
            Ys = Y.permute(0, 2, 3, 1)[M] if Y.ndim == 4 else Y
            self.set_spectral_subspace(Ys.detach().cpu().double().numpy())
        groups = self._param_groups(lr, lr_endmembers if lr_endmembers > 0 else 0.0, weight_decay)
        groups = [g for g in groups if g["lr"] > 0]
        if not groups:
            raise ValueError("nothing to train")
        Ys = Y.permute(0, 2, 3, 1)[M] if Y.ndim == 4 else Y  # the labelled spectra (for the ridge)
        if optimizer == "lbfgs":
            return self._fit_lbfgs(Y, A, M, Ys, groups, epochs=epochs, lr=lr, weight_decay=weight_decay,
                                   ridge=ridge, solve_tol=solve_tol, solve_max_iter=solve_max_iter,
                                   b_tol=b_tol, b_max_iter=b_max_iter, seed=seed)
        opt = torch.optim.AdamW(groups)
        sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(int(epochs), 1))
                 if schedule == "cosine" else None)
        gen = torch.Generator().manual_seed(int(seed)) if seed is not None else torch.Generator()
        if seed is None:
            gen.seed()
        A0 = self.init_abundances(Y if Y.ndim == 4 else Y[:, :, None, None])
        if Y.ndim == 2:
            A0 = A0[:, :, 0, 0]
        n = Y.shape[0]
        hist: dict[str, Any] = {"loss": [], "residual": []}
        best_state, best_loss, best_epoch = copy.deepcopy(self.state_dict()), math.inf, 0
        was_training = self.training
        self.train()
        t0 = time.perf_counter()
        bar = tqdm(range(1, epochs + 1), desc="DEQUnmix.fit", unit="epoch",
                   disable=None if progress is None else not progress, leave=False)
        try:
            for epoch in bar:
                perm = torch.randperm(n, generator=gen)
                tot, cnt, worst = 0.0, 0, 0.0
                # one full batch: the epoch's loss is that of the state before its step
                before = copy.deepcopy(self.state_dict()) if n <= batch_size else None
                for s in range(0, n, batch_size):
                    idx = perm[s:s + batch_size]
                    state = self.equilibrium(Y[idx], A0=A0[idx], max_iter=train_max_iter, warn=False)
                    worst = max(worst, self.last_info.max_residual)
                    A0[idx] = state.detach()  # warm start of the next epoch's solve
                    pred = self.abundances_from_state(state)
                    m = M[idx]
                    if pred.ndim == 4:
                        err = (pred - A[idx]).pow(2).sum(1)[m]
                    else:
                        err = (pred - A[idx]).pow(2).sum(1)
                    loss = err.mean()
                    opt.zero_grad(set_to_none=True)
                    if ridge:
                        loss_r = loss + ridge * self._ridge_penalty(Ys)
                    else:
                        loss_r = loss
                    if jac_reg > 0:
                        Yi = Y[idx] if Y.ndim == 4 else Y[idx][:, :, None, None]
                        Ai = state if state.ndim == 4 else state[:, :, None, None]
                        total = loss_r + jac_reg * self.jacobian_penalty(Yi, Ai, generator=gen)
                    else:
                        total = loss_r
                    total.backward()
                    opt.step()
                    self._project_endmembers()
                    tot += float(loss.detach()) * err.numel()
                    cnt += err.numel()
                if sched is not None:
                    sched.step()
                hist["loss"].append(tot / max(cnt, 1))
                hist["residual"].append(worst)
                if hist["loss"][-1] < best_loss:
                    best_loss, best_epoch = hist["loss"][-1], epoch
                    best_state = before if before is not None else copy.deepcopy(self.state_dict())
                bar.set_postfix({"loss": f"{hist['loss'][-1]:.4g}"}, refresh=False)
        finally:
            bar.close()
            self.train(was_training)
        self.load_state_dict(best_state)
        hist.update(best_epoch=best_epoch, best_loss=best_loss, time_s=time.perf_counter() - t0,
                    epochs=epochs, seed=seed, schedule=schedule)
        self.eval()
        return hist

    def _ridge_penalty(self, Ys: torch.Tensor) -> torch.Tensor:
        """``mean_i ||V y_i||^2`` over the spectra ``Ys`` (n, bands)."""
        V = self.target_shift()
        return (Ys @ V.T).pow(2).sum(1).mean()

    def _fit_lbfgs(self, Y: torch.Tensor, A: torch.Tensor, M: torch.Tensor, Ys: torch.Tensor,
                   groups: list[dict], *, epochs: int, lr: float, weight_decay: float, ridge: float,
                   solve_tol: float, solve_max_iter: int, b_tol: float, b_max_iter: int,
                   seed: int | None) -> dict[str, Any]:
        """Full-batch L-BFGS for :meth:`fit` (``optimizer="lbfgs"``; see there)."""
        params = [p for g in groups for p in g["params"]]
        shift = {id(p) for p in (self.V, self.Vc) if p is not None}
        decay = [p for p in params if id(p) not in shift and p is not self.E]
        A0 = self.init_abundances(Y if Y.ndim == 4 else Y[:, :, None, None])
        if Y.ndim == 2:
            A0 = A0[:, :, 0, 0]
        opt = torch.optim.LBFGS(params, lr=float(lr), max_iter=max(int(epochs), 1),
                                max_eval=max(int(epochs * 1.25), 1), history_size=50,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                                tolerance_change=1e-14)
        hist: dict[str, Any] = {"loss": [], "residual": [], "objective": [], "optimizer": "lbfgs"}
        best = {"state": copy.deepcopy(self.state_dict()), "obj": math.inf, "loss": math.inf, "i": 0}
        c = self.config
        saved = (c["b_tol"], c["b_max_iter"])
        c["b_tol"], c["b_max_iter"] = float(b_tol), int(b_max_iter)

        def evaluate() -> tuple[torch.Tensor, torch.Tensor, bool]:
            pred = self(Y, A0=A0, max_iter=int(solve_max_iter), tol=float(solve_tol), warn=False)
            info = self.last_info
            err = (pred - A).pow(2).sum(1)
            loss = (err[M] if pred.ndim == 4 else err).mean()
            obj = loss
            if ridge:
                obj = obj + ridge * self._ridge_penalty(Ys)
            if weight_decay and decay:
                obj = obj + weight_decay * sum(p.pow(2).sum() for p in decay)
            ok = info.max_residual <= 10 * float(solve_tol)
            hist["residual"].append(info.max_residual)
            return loss, obj, ok

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            loss, obj, ok = evaluate()
            lv, ov = float(loss.detach()), float(obj.detach())
            if not (math.isfinite(lv) and math.isfinite(ov)):
                raise FloatingPointError(f"training loss became {lv} (L-BFGS)")
            hist["loss"].append(lv)
            hist["objective"].append(ov)
            if ov < best["obj"] and (ok or not hist["objective"][:-1]):
                best.update(state=copy.deepcopy(self.state_dict()), obj=ov, loss=lv,
                            i=len(hist["loss"]) - 1)
            obj.backward()
            return obj

        was_training = self.training
        self.train()
        t0 = time.perf_counter()
        stopped = None
        try:
            opt.step(closure)  # one call runs all the iterations (as U-ADMM-AENet's training)
        except FloatingPointError as exc:  # keep the best state seen so far
            stopped = str(exc)
        finally:
            c["b_tol"], c["b_max_iter"] = saved
            self.train(was_training)
        self.load_state_dict(best["state"])
        hist.update(best_epoch=best["i"], best_loss=best["loss"], best_objective=best["obj"],
                    evals=len(hist["loss"]), stopped=stopped, time_s=time.perf_counter() - t0,
                    epochs=epochs, seed=seed)
        self.eval()
        return hist

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy (keep-best states): the lock is dropped
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _cube_array(cube: Any, n_bands: int) -> Any:
    """(bands, H, W) float array from a DataArray (any dim order, nodata -> NaN) or an array.

    A dask-backed DataArray stays lazy (windows are read on demand), anything else becomes numpy.
    """
    import xarray as xr

    if isinstance(cube, xr.DataArray):
        from .._cube import prepare_cube

        arr, _ = prepare_cube(cube, np.float32)
        if not hasattr(arr, "dask"):
            arr = np.asarray(arr)
    else:
        arr = np.asarray(cube, dtype=np.float32)
    if arr.ndim != 3:
        raise ValueError(f"the scene must be (bands, H, W); got shape {arr.shape}")
    if arr.shape[0] != n_bands:
        from ..errors import BandMismatchError

        raise BandMismatchError(f"the model expects {n_bands} bands but the scene has {arr.shape[0]}")
    return arr
