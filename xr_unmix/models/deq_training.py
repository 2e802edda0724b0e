"""DEQ-Unmix training: unsupervised per scene (:func:`fit_scene`) and supervised (:func:`fit`).

Both run on the shared loop :func:`xr_unmix.models.training.train_loop` (seeding, keep-best, one
divergence policy, progress bar); this module only says what one epoch is. The functions are bound as
:meth:`DEQUnmix.fit_scene <xr_unmix.DEQUnmix.fit_scene>` and :meth:`DEQUnmix.fit <xr_unmix.DEQUnmix.fit>`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from .training import Diverged, Epoch, KeepBest, TrainingWarning, train_loop

#: :func:`fit_scene`'s discrepancy guard: no training when the start's reconstruction RMS is at most this
#: multiple of the estimated noise level. Chosen on the TUNE scenes of recipes/eval_deq.py, where the
#: ratio is 1.00-1.18 where training made aRMSE worse and 3.1-5.9 where it helped (docs/deq.md)
DISCREPANCY = 1.5
#: Weight of the endmember anchor ``mean_r angle(M_r, M0_r)`` in :func:`fit_scene`'s objective (``M0``: the
#: endmembers at the start); fixed (the ``anchor`` option of release 0.1 was never measured otherwise)
ANCHOR = 1.0


def param_groups(model: Any, lr: float, lr_endmembers: float, weight_decay: float) -> list[dict]:
    """AdamW groups: the network (``lr``, ``weight_decay``) and the endmembers (``lr_endmembers``)."""
    groups: list[dict[str, Any]] = []
    net = [p for n, p in model.named_parameters() if n != "E" and p.requires_grad]
    if net and lr > 0:
        groups.append({"params": net, "lr": lr, "weight_decay": weight_decay})
    if model.E.requires_grad and lr_endmembers > 0:
        groups.append({"params": [model.E], "lr": lr_endmembers, "weight_decay": 0.0})
    if not groups:
        raise ValueError("nothing to train: no CNN (use_cnn=False) and fixed endmembers, or lr 0")
    return groups


def cube_array(cube: Any, n_bands: int) -> Any:
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


class SceneData:
    """Windows of a ``(bands, H, W)`` scene (numpy or lazy dask) as tensors with a validity mask."""

    def __init__(self, src: Any, dtype: torch.dtype, device: torch.device, seed: int | None) -> None:
        self.src, self.dtype, self.device = src, dtype, device
        self.H, self.W = src.shape[1:]
        self.rng = np.random.default_rng(seed)

    def load(self, a: int, b: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Window ``[a:a+h, b:b+w]``: ``(bands, h, w)`` with invalid pixels 0, and ``(h, w)`` valid."""
        blk = np.asarray(self.src[:, a:a + h, b:b + w], dtype=np.float32)  # reads only this window
        ok = np.isfinite(blk).all(0)
        return (torch.as_tensor(np.where(ok[None], blk, 0.0), dtype=self.dtype, device=self.device),
                torch.as_tensor(ok, device=self.device))

    def sample(self, k: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` random ``size`` tiles holding at least one valid pixel (50 draws at most)."""
        th, tw = min(size, self.H), min(size, self.W)
        for _ in range(50):  # tiles of nodata only carry no signal: draw again
            ys = self.rng.integers(0, self.H - th + 1, size=k)
            xs = self.rng.integers(0, self.W - tw + 1, size=k)
            tiles = [self.load(int(a), int(b), th, tw) for a, b in zip(ys, xs, strict=True)]
            Yb, Vb = torch.stack([t[0] for t in tiles]), torch.stack([t[1] for t in tiles])
            if bool(Vb.any()):
                return Yb, Vb
        raise ValueError("50 random tile draws found no valid pixel; is the scene all nodata?")

    def whole(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scene as one batch ``(1, bands, H, W)``, ``(1, H, W)``."""
        Y, V = self.load(0, 0, self.H, self.W)
        if not bool(V.any()):
            raise ValueError("the scene has no valid pixel (all NaN or nodata)")
        return Y[None], V[None]


def scene_objective(model: Any, Yb: torch.Tensor, Vb: torch.Tensor, Z: torch.Tensor,
                    E0: torch.Tensor) -> torch.Tensor:
    """Mean spectral angle between the valid pixels of ``Yb`` and ``M Z``, plus :data:`ANCHOR` times the
    mean angle between the endmembers ``M`` and ``E0``."""
    from .losses import spectral_angle_loss

    E = model.endmember_matrix()
    rec = torch.einsum("br,nrhw->nbhw", E, Z)
    y, r = Yb.permute(0, 2, 3, 1)[Vb], rec.permute(0, 2, 3, 1)[Vb]
    return spectral_angle_loss(r, y) + ANCHOR * spectral_angle_loss(E.T, E0.T)


def start_discrepancy(model: Any, Yb: torch.Tensor, Vb: torch.Tensor) -> tuple[float, float]:
    """``(rms, sigma)``: RMS error of the untrained start's reconstruction ``M z`` of the valid pixels
    of ``Yb`` ``(B, bands, h, w)`` (mask ``Vb``), and their noise level estimated from the spectra
    alone (:func:`~xr_unmix.extraction.noise_sigma`); ``sigma`` is NaN with fewer than twice as many
    valid pixels as bands (the regression would fit the noise)."""
    from ..extraction import noise_sigma

    with torch.no_grad():
        Z = model.equilibrium(Yb, warn=False)
        rec = torch.einsum("br,nrhw->nbhw", model.endmember_matrix(), Z)
        y, r = Yb.permute(0, 2, 3, 1)[Vb], rec.permute(0, 2, 3, 1)[Vb]
        rms = float((y - r).double().pow(2).mean().sqrt())
    Yv = y.double().cpu().numpy()
    sigma = noise_sigma(Yv) if Yv.shape[0] >= 2 * Yv.shape[1] else math.nan
    return rms, sigma


def fit_scene(self: Any, cube: Any, *, epochs: int = 200, seed: int | None = None, lr: float = 1e-4,
              lr_endmembers: float = 1e-2, weight_decay: float = 1e-4, max_pixels: int = 128 * 128,
              tile_size: int = 64, tiles_per_epoch: int = 4, train_max_iter: int | None = 10,
              keep_best: bool = True, discrepancy: float | None = DISCREPANCY,
              progress: bool | None = None) -> dict[str, Any]:
    """Unsupervised training on one scene (no labels), in place.

    Loss: mean spectral angle between every valid pixel ``y`` and ``M a``, plus the mean angle between
    the endmembers and their start (:data:`ANCHOR`). AdamW; the endmembers (if learnable) have their
    own learning rate and are clipped to >= 0 after every step. A scene of at most ``max_pixels``
    pixels is used whole every epoch (warm-started); a larger one is sampled as ``tiles_per_epoch``
    random ``tile_size`` tiles per epoch, the objective tracked on fixed tiles solved to ``max_iter`` /
    ``tol``, so that a state is judged by its equilibrium (whole scenes: see :func:`_settled`).

    Keep-best (:func:`~xr_unmix.models.training.train_loop`): the state with the lowest objective whose
    solve converged, the start (epoch 0, = FCLS) included; a non-finite or exploding loss restores it
    and stops with one line. Discrepancy guard: when the start already reconstructs the (tracked)
    pixels to within ``discrepancy`` times the noise level estimated from the cube alone
    (:func:`~xr_unmix.extraction.noise_sigma`), training is skipped. When training is skipped or no
    epoch beats the start, one :class:`~xr_unmix.models.training.TrainingWarning` line says so.

    Parameters
    ----------
    cube : DataArray (band, y, x) or array (bands, H, W)
        Reflectance; NaN in any band marks a pixel invalid (filled with 0, left out of the loss).
    epochs : int
    seed : int, optional
        Seeds the tile sampling (the CNN's initialisation is seeded in :meth:`from_endmembers`).
    lr, lr_endmembers, weight_decay : float
        AdamW learning rates of the CNN and of the endmembers, and the CNN's weight decay. ``lr=1e-4``
        was chosen on the TUNE scenes of recipes/eval_deq.py (``1e-3``: the trained fixed point moved so
        far that training became unstable; ``1e-5``: too slow for the CNN to gain) and, with it,
        ``lr_endmembers=1e-2`` (better than ``5e-3`` on all three TUNE scenes that train; docs/deq.md).
    max_pixels, tile_size, tiles_per_epoch : int
    train_max_iter : int, optional
        Forward iterations of each training solve (warm-started, so iterations accumulate); ``None``:
        the configured ``max_iter``.
    keep_best : bool
    discrepancy : float, optional
        Threshold of the guard above (:data:`DISCREPANCY`); ``None`` or ``0``: always train.
    progress : bool, optional
        Progress bar (``None``: only on a terminal).

    Returns
    -------
    dict
        ``loss`` (tracked objective per epoch, of the state before that epoch's step), ``residual``
        and ``iterations`` (of that solve), ``backward_residual``, ``best_epoch`` (0 = the
        untrained start), ``best_loss`` (its tracked objective), ``final_loss`` (the returned model's
        objective, solved afresh from FCLS to its own tolerance; ``final_converged``), ``initial_loss``
        (the start's), ``improved``, ``summary`` (one line with both objectives), ``stopped``,
        ``time_s``, ``whole_scene``, ``start_rms`` (RMS reconstruction error of the start),
        ``noise_sigma`` (the estimated noise level), ``skipped`` (the guard kept the start).
    """
    src = cube_array(cube, self.n_bands)  # numpy, or a lazy dask array for a dask-backed cube
    data = SceneData(src, self.E.dtype, self.E.device, seed)
    whole = data.H * data.W <= max_pixels
    if whole:
        batch = data.whole()
        track = batch
    else:
        if min(data.H, data.W) < 2:
            raise ValueError(f"the scene ({data.H} x {data.W} px) is too small to sample tiles from")
        track = data.sample(max(tiles_per_epoch, 4), tile_size)
    E0 = self.endmember_matrix().detach().clone()
    rms, sigma = start_discrepancy(self, *track)
    skip = bool(discrepancy) and rms <= float(discrepancy) * sigma
    opt = torch.optim.AdamW(param_groups(self, lr, lr_endmembers, weight_decay))
    mi, tol = train_max_iter, self.config["tol"]
    warm: dict[str, torch.Tensor | None] = {"train": None, "track": None}
    bres: list[float] = []

    def objective(Yb: torch.Tensor, Vb: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
        return scene_objective(self, Yb, Vb, Z, E0)

    def step(epoch: int, guard: KeepBest) -> Epoch:
        if not whole:
            with torch.no_grad():  # the tracked objective: the state's equilibrium on fixed tiles
                Zt = self.equilibrium(track[0], A0=warm["track"], warn=False)
                warm["track"] = Zt
                ev, info_t = float(objective(*track, Zt)), self.last_info
            Yb, Vb = data.sample(tiles_per_epoch, tile_size)
        else:
            Yb, Vb = batch
        Z = self.equilibrium(Yb, A0=warm["train"] if whole else None, max_iter=mi, warn=False)
        info = self.last_info
        loss = objective(Yb, Vb, Z)
        if whole:
            ev, info_t = float(loss.detach()), info
            if not _settled(info, tol) and ev < guard.best_loss:  # a candidate: judge its equilibrium
                with torch.no_grad():
                    Z = self.equilibrium(Yb, A0=Z.detach(), warn=False)
                    ev, info_t = float(objective(Yb, Vb, Z)), self.last_info
        ok = epoch == 0 or _settled(info_t, tol)
        r = Epoch(ev, eligible=ok, state=guard.snapshot(),
                  info={"residual": info_t.max_residual, "iterations": float(info_t.n_iter)})
        if not math.isfinite(float(loss.detach())):
            raise Diverged(f"the training loss became {float(loss.detach())}")
        if epoch == epochs:
            return r
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self._project_endmembers()
        bres.append(self.backward_stats.last_residual)
        if whole:
            warm["train"] = Z.detach()
        return r

    hist = train_loop(self, step, epochs=0 if skip else epochs, first_epoch=0, seed=seed,
                      keep_best=keep_best, desc="DEQUnmix.fit_scene", progress=progress)
    with torch.no_grad():  # the returned model's own objective: its equilibrium, solved from FCLS
        final = float(objective(*track, self.equilibrium(track[0], warn=False)))
    hist.update(backward_residual=bres, epochs=epochs, whole_scene=whole,
                initial_loss=hist["loss"][0] if hist["loss"] else math.nan, final_loss=final,
                final_converged=bool(self.last_info.all_converged), start_rms=rms,
                noise_sigma=sigma, skipped=skip)
    if skip:
        hist["summary"] = (f"training skipped: the start already reconstructs the scene to the noise "
                           f"level (RMS {rms:.4g} <= {discrepancy:g} x noise sigma {sigma:.4g} "
                           f"estimated from the cube); the returned model is the untrained start")
        hist["improved"] = False
        warnings.warn(f"DEQUnmix.fit_scene: {hist['summary']}", TrainingWarning, stacklevel=2)
        return hist
    _summarise(hist, keep_best)
    return hist


def _settled(info: Any, tol: float) -> bool:
    """Whether a training solve is close enough to its equilibrium for its objective to count (in
    whole-scene mode an unsettled epoch that beats the best so far is solved on and judged there)."""
    return bool(info.all_converged or info.max_residual < 10 * tol)


def _summarise(hist: dict[str, Any], keep_best: bool) -> None:
    """``improved`` and the one-line ``summary`` of a :func:`fit_scene` run; warn if no improvement."""
    start, at = hist["initial_loss"], hist["best_epoch"]
    hist["improved"] = bool(at is not None and at > 0)
    if hist["improved"]:
        hist["summary"] = (f"objective {start:.6g} at the start -> {hist['final_loss']:.6g} for the "
                           f"returned model ({'best ' if keep_best else 'last '}state: epoch "
                           f"{at if keep_best else hist['epochs']} of {hist['epochs']})")
        return
    later = hist["loss"][1:]
    k = int(np.nanargmin(later)) + 1 if later and np.isfinite(later).any() else None
    tried = f"{later[k - 1]:.6g} at best after training (epoch {k})" if k else "no finite objective after it"
    hist["summary"] = (f"training did not improve on its start: objective {start:.6g} at the start, "
                       f"{tried}, no converged epoch below the start"
                       + ("; the returned model is the untrained start (FCLS)" if keep_best else
                          f"; the returned model is the last state (objective {hist['loss'][-1]:.6g})"))
    warnings.warn(f"DEQUnmix.fit_scene: {hist['summary']}", TrainingWarning, stacklevel=3)


def _labels(self: Any, spectra: Any, abundances: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Y, A, M)``: pixels ``(n, bands)``/``(n, R)`` or tiles ``(n, bands, h, w)``/``(n, R, h, w)``,
    and the mask of labelled pixels (NaN labels in tiles are unlabelled)."""
    from ._train import as_tensor, check_pairs

    dtype, dev = self.E.dtype, self.E.device
    Ya = np.asarray(getattr(spectra, "values", spectra))
    if Ya.ndim == 2:
        Y, A = check_pairs(spectra, abundances, n_bands=self.n_bands, n_endmembers=self.n_endmembers,
                           dtype=dtype, device=dev)
        return Y, A, torch.ones(A.shape[0], dtype=torch.bool, device=dev)
    if Ya.ndim != 4:
        raise ValueError(f"spectra must be (n_pixels, bands) or (n_tiles, bands, h, w); got {Ya.shape}")
    Y = as_tensor(spectra, "spectra", dtype, dev)
    A = as_tensor(abundances, "abundances", dtype, dev)
    if Y.shape[1] != self.n_bands or A.shape[1] != self.n_endmembers or \
            Y.shape[0] != A.shape[0] or Y.shape[2:] != A.shape[2:]:
        raise ValueError(f"tiles must be (n, {self.n_bands}, h, w) and labels (n, {self.n_endmembers}, "
                         f"h, w); got {tuple(Y.shape)}, {tuple(A.shape)}")
    if not torch.isfinite(Y).all():
        raise ValueError("spectra contain NaN/inf; fill invalid pixels first")
    M = torch.isfinite(A).all(1)
    if not M.any():
        raise ValueError("no labelled pixel (every label is NaN)")
    return Y, torch.nan_to_num(A), M


def fit(self: Any, spectra: Any, abundances: Any, *, epochs: int = 200, batch_size: int = 64,
        lr: float = 1e-4, lr_endmembers: float = 0.0, weight_decay: float = 1e-4,
        seed: int | None = None, train_max_iter: int | None = 10,
        progress: bool | None = None) -> dict[str, Any]:
    """Supervised training on labelled pixels or tiles, in place.

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
        AdamW on the network (``lr=1e-4``: at ``1e-3`` the first step took the error on the labels of
        sample_a from 0.0005 to 0.17, docs/deq.md); the endmembers train only when learnable and
        ``lr_endmembers > 0``.
    seed : int, optional
        Seeds the batch order.
    train_max_iter : int, optional
        Forward iterations while training; ``None``: the configured ``max_iter``.
    progress : bool, optional

    Keep-best: before every epoch (and after the last) the state is scored by its mean squared error
    on all the labels at its equilibrium (solved to the model's ``max_iter`` / ``tol``, warm-started);
    the lowest whose solve converged is returned, the untrained start (epoch 0) included.

    Returns
    -------
    dict
        ``loss`` (that score per epoch, ``epochs + 1`` values: index 0 is the start; mean squared
        abundance error summed over endmembers), ``eval_residual`` (of its solve), ``train_loss`` and
        ``residual`` (mean loss and worst residual of the epoch's truncated training solves),
        ``time_s``, ``best_epoch`` (0 = the start), ``best_loss``, ``stopped``.
    """
    Y, A, M = _labels(self, spectra, abundances)
    groups = param_groups(self, lr, lr_endmembers, weight_decay)
    A0 = self.init_abundances(Y if Y.ndim == 4 else Y[:, :, None, None])
    A0 = A0 if Y.ndim == 4 else A0[:, :, 0, 0]
    opt = torch.optim.AdamW(groups)
    n, tol = Y.shape[0], self.config["tol"]
    residual: list[float] = []
    train_loss: list[float] = []
    warm = {"eval": A0.clone()}

    def step(epoch: int, guard: KeepBest) -> Epoch:
        with torch.no_grad():  # the state's loss at its equilibrium on every label (epoch 0: the start)
            Z = self.equilibrium(Y, A0=warm["eval"], warn=False)
            warm["eval"] = Z
            ev, info = float(sq_error(Z, A, M).mean()), self.last_info
        if not math.isfinite(ev):
            raise Diverged(f"the loss became {ev}")
        r = Epoch(ev, eligible=epoch == 0 or _settled(info, tol), state=guard.snapshot(),
                  info={"eval_residual": info.max_residual})
        if epoch == epochs:
            return r
        perm = torch.randperm(n, generator=step.generator)  # type: ignore[attr-defined]
        tot, cnt, worst = 0.0, 0, 0.0
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            state = self.equilibrium(Y[idx], A0=A0[idx], max_iter=train_max_iter, warn=False)
            worst = max(worst, self.last_info.max_residual)
            A0[idx] = state.detach()  # warm start of the next epoch's solve
            err = sq_error(state, A[idx], M[idx])
            loss = err.mean()
            if not math.isfinite(float(loss.detach())):
                raise Diverged(f"the training loss became {float(loss.detach())}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self._project_endmembers()
            tot += float(loss.detach()) * err.numel()
            cnt += err.numel()
        residual.append(worst)
        train_loss.append(tot / max(cnt, 1))
        return r

    hist = train_loop(self, step, epochs=int(epochs), first_epoch=0, seed=seed, desc="DEQUnmix.fit",
                      progress=progress)
    hist.update(residual=residual, train_loss=train_loss, epochs=epochs)
    return hist


def sq_error(pred: torch.Tensor, A: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Squared abundance error per labelled pixel (summed over endmembers)."""
    err = (pred - A).pow(2).sum(1)
    return err[M] if pred.ndim == 4 else err
