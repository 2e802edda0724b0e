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

import math
import threading
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
from . import deq_training
from .base import UnmixModel, note_solve
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
        self.record_solve({"converged": bool(info.all_converged), "residual": float(info.max_residual),
                           "iterations": int(info.n_iter), "tol": float(info.tol)},
                          warn=warn and not torch.is_grad_enabled())

    def record_solve(self, rec: dict[str, Any], *, warn: bool = True) -> None:
        """Count one forward solve ``{"converged", "residual", "iterations", "tol"}`` in
        :attr:`solve_stats`, and warn (:class:`~xr_unmix.errors.ConvergenceWarning`) if it did not
        converge. Also called with the records of solves run on ``distributed`` workers
        (:mod:`xr_unmix._workers`), so that they reach the caller's model as local ones do."""
        note_solve(rec)
        with self._lock:
            s = self._solve_stats
            s["n_solves"] += 1
            s["n_unconverged"] += int(not rec["converged"])
            s["max_residual"] = max(float(s["max_residual"]), rec["residual"])
            s["max_iterations"] = max(int(s["max_iterations"]), rec["iterations"])
        if warn and not rec["converged"]:
            from .._warn import user_stacklevel

            warnings.warn(
                f"DEQUnmix: the fixed-point solve stopped after {rec['iterations']} iterations with "
                f"relative residual {rec['residual']:.3g} > tol={rec['tol']:g}; raise max_iter or "
                "loosen tol", ConvergenceWarning, stacklevel=user_stacklevel(),
            )

    # -- training (xr_unmix.models.deq_training, on the shared loop of xr_unmix.models.training) ------
    fit_scene = deq_training.fit_scene
    fit = deq_training.fit

    def _project_endmembers(self) -> None:
        with torch.no_grad():
            self.E.clamp_(min=0)

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy (keep-best states): the lock is dropped
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
