"""Synthetic linear mixtures of known endmembers, for training networks without labelled pixels.

:func:`simulate` draws abundances, mixes the endmembers linearly (``y = E a``) and adds white Gaussian
noise at a chosen signal-to-noise ratio. Two abundance models:

- ``spatial=False`` (default): independent pixels. A fraction ``pure_fraction`` of pure pixels; every
  other pixel mixes ``k`` randomly chosen endmembers, ``k`` uniform in ``2 .. max_active``, with
  ``Dirichlet(alpha)`` fractions -- so both sparse (few endmembers) and fully mixed pixels occur.
- ``spatial=True``: the image procedure of the U-ADMM-AENet paper (sec. 5.1, after Qian et al.): an
  ``H x W`` image cut into disjoint ``patch x patch`` squares, each square mixing ``len(fractions)``
  randomly chosen endmembers at ``fractions`` (``[0.8, 0.2]``), the abundance maps convolved with a
  ``smooth_size x smooth_size`` Gaussian filter, then rescaled to sum to one per pixel. Pixels are
  returned in row-major image order (reshape to ``(H, W, ...)``).

:func:`simulate_scene` makes a whole scene as a cube ``(band, y, x)`` with the effects real scenes
have, each an option (off by default): smooth abundance fields (Gaussian random fields through a
softmax), no pure pixels (``max_abundance``), per-pixel brightness from topography and shade
(``brightness``), endmember variability (each pixel's spectra perturbed, ``variability``, or drawn from
a class bundle, ``bundles``), white noise at ``snr_db``, and NaN nodata holes (``nodata_fraction``).
"""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


def _endmember_matrix(E: Any) -> np.ndarray:
    from ._cube import as_endmembers

    return np.asarray(as_endmembers(E).values, dtype=np.float64)


def add_noise(Y: np.ndarray, snr_db: float | None, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise at ``snr_db`` (dB) to spectra ``(n, bands)``.

    SNR is ``10 log10(mean(Y^2) / sigma^2)`` over the whole array (one ``sigma`` for every band and pixel).
    ``None`` or ``inf`` returns ``Y`` unchanged.
    """
    if snr_db is None or np.isinf(snr_db):
        return Y
    power = float(np.mean(Y**2))
    sigma = np.sqrt(power / 10.0 ** (float(snr_db) / 10.0))
    return Y + rng.normal(0.0, sigma, size=Y.shape)


def _dirichlet_abundances(n: int, R: int, rng: np.random.Generator, alpha: float, pure_fraction: float,
                          max_active: int) -> np.ndarray:
    A = np.zeros((n, R))
    pure = rng.random(n) < pure_fraction
    idx_pure = np.flatnonzero(pure)
    A[idx_pure, rng.integers(0, R, size=idx_pure.size)] = 1.0
    mixed = np.flatnonzero(~pure)
    if R == 1:
        A[mixed, 0] = 1.0
        return A
    k = rng.integers(2, max_active + 1, size=mixed.size)
    w = rng.gamma(alpha, 1.0, size=(mixed.size, R))
    # keep the k smallest of a random key per row = k random endmembers per pixel
    keys = rng.random((mixed.size, R))
    kth = np.sort(keys, axis=1)[np.arange(mixed.size), k - 1][:, None]
    w = np.where(keys <= kth, w, 0.0)
    s = w.sum(1, keepdims=True)
    # a Gamma draw can underflow to 0 for tiny alpha: fall back to equal shares of the active set
    w = np.where(s > 0, w / np.where(s > 0, s, 1.0), (keys <= kth) / k[:, None])
    A[mixed] = w
    return A


def _patch_abundances(shape: tuple[int, int], R: int, rng: np.random.Generator, patch: int,
                      fractions: Sequence[float], smooth_size: int, smooth_sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    H, W = shape
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.ndim != 1 or fr.size < 1 or fr.size > R or (fr < 0).any() or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be 1..{R} non-negative numbers summing to one; got {fractions!r}")
    maps = np.zeros((R, H, W))
    for i0 in range(0, H, patch):
        for j0 in range(0, W, patch):
            ems = rng.choice(R, size=fr.size, replace=False)
            for e, f in zip(ems, fr, strict=True):
                maps[e, i0:i0 + patch, j0:j0 + patch] += f
    if smooth_size > 1:
        radius = (int(smooth_size) - 1) // 2
        maps = np.stack([gaussian_filter(m, smooth_sigma, mode="reflect", truncate=radius / smooth_sigma)
                         for m in maps])
    maps = np.clip(maps, 0.0, None)
    maps /= maps.sum(0, keepdims=True)
    return maps.reshape(R, H * W).T


def simulate(
    E: Any,
    n_pixels: int,
    *,
    snr_db: float | None = 30.0,
    seed: int | np.random.Generator | None = None,
    spatial: bool = False,
    image_shape: tuple[int, int] | None = None,
    alpha: float = 1.0,
    pure_fraction: float = 0.1,
    max_active: int | None = None,
    patch: int = 10,
    fractions: Sequence[float] = (0.8, 0.2),
    smooth_size: int = 11,
    smooth_sigma: float = 2.0,
    dtype: Any = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic pixels ``y = E a + n`` with known abundances ``a``.

    Parameters
    ----------
    E : DataArray (band, endmember) or array (bands, R)
        Endmember spectra (any reflectance scale; the spectra come out in the same units).
    n_pixels : int
        Number of pixels. With ``spatial=True`` it must equal ``H * W`` of ``image_shape`` (default a
        square image, so ``n_pixels`` must then be a perfect square).
    snr_db : float or None
        Signal-to-noise ratio of the added white Gaussian noise, dB (``10 log10(mean(y^2)/sigma^2)``).
        ``None`` adds no noise. Default 30 dB.
    seed : int or numpy Generator, optional
        Reproducibility.
    spatial : bool
        Use the paper's smoothed-patch image model (module docstring) instead of independent pixels.
    image_shape : (int, int), optional
        ``(H, W)`` for ``spatial=True``.
    alpha : float
        Dirichlet concentration of mixed pixels (1: uniform on the simplex of the active endmembers).
    pure_fraction : float
        Expected fraction of pure pixels (``spatial=False``).
    max_active : int, optional
        Most endmembers in one pixel (default all ``R``).
    patch, fractions, smooth_size, smooth_sigma
        Spatial model: patch side (px), the fractions of the endmembers mixed in each patch, the Gaussian
        filter's size (px, odd) and standard deviation (px).
    dtype : numpy dtype
        Of the returned arrays.

    Returns
    -------
    spectra : ndarray, shape (n_pixels, bands)
    abundances : ndarray, shape (n_pixels, R), non-negative, rows summing to one

    Examples
    --------
    >>> Y, A = xr_unmix.simulate(E, 5000, snr_db=30, seed=0)          # doctest: +SKIP
    >>> model = xr_unmix.UADMMNet.from_endmembers(E); model.fit(Y, A)  # doctest: +SKIP
    """
    Em = _endmember_matrix(E)
    R = Em.shape[1]
    n = int(n_pixels)
    if n < 1:
        raise ValueError(f"n_pixels must be >= 1, got {n_pixels}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if spatial:
        if image_shape is None:
            side = int(round(np.sqrt(n)))
            if side * side != n:
                raise ValueError(f"spatial=True needs image_shape=(H, W) or a square n_pixels; got {n}")
            image_shape = (side, side)
        H, W = (int(v) for v in image_shape)
        if H * W != n:
            raise ValueError(f"image_shape {image_shape} has {H * W} pixels, not n_pixels={n}")
        if patch < 1 or smooth_size < 1 or smooth_sigma <= 0:
            raise ValueError("patch and smooth_size must be >= 1 and smooth_sigma > 0")
        A = _patch_abundances((H, W), R, rng, int(patch), fractions, int(smooth_size), float(smooth_sigma))
    else:
        ma = R if max_active is None else int(max_active)
        if not 1 <= ma <= R:
            raise ValueError(f"max_active must be in 1..{R}, got {max_active}")
        if not 0.0 <= pure_fraction <= 1.0:
            raise ValueError(f"pure_fraction must be in [0, 1], got {pure_fraction}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        A = _dirichlet_abundances(n, R, rng, float(alpha), float(pure_fraction) if ma > 1 else 1.0, ma)
    Y = add_noise(A @ Em.T, snr_db, rng)
    return Y.astype(dtype, copy=False), A.astype(dtype, copy=False)


class SimulatedScene(NamedTuple):
    """A scene from :func:`simulate_scene`.

    Attributes
    ----------
    cube : DataArray (band, y, x)
        Spectra ``s * sum_r a_r e_r(pixel) + noise``; NaN in every band at the nodata holes.
    abundances : DataArray (endmember, y, x)
        The true fractions (non-negative, summing to one; kept at the holes too).
    endmembers : DataArray (band, endmember)
        The reference spectra ``E`` (for bundles: the spectra passed as ``E``, e.g. the bundle means).
    brightness : DataArray (y, x)
        The per-pixel scale ``s`` (1 everywhere without ``brightness``).
    members : ndarray (R, y, x) of int, or None
        With ``bundles``: which member of each class's bundle every pixel drew.
    """

    cube: Any
    abundances: Any
    endmembers: Any
    brightness: Any
    members: np.ndarray | None


def _field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth Gaussian random field(s), standardised: white noise through a Gaussian filter of ``sigma``
    px on the last two axes (wrap-free ``reflect`` edges)."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), [0] * (len(shape) - 2) + [sigma, sigma], mode="reflect")
    f -= f.mean(axis=(-2, -1), keepdims=True)
    return f / (f.std(axis=(-2, -1), keepdims=True) + 1e-12)


def _cap_abundances(A: np.ndarray, cap: float) -> np.ndarray:
    """Shrink every pixel of ``A`` (R, n) towards the uniform mixture just enough that its largest
    fraction is ``<= cap``: ``t a + (1 - t) / R`` keeps the fractions non-negative and summing to one."""
    R = A.shape[0]
    top = A.max(0)
    t = np.where(top > cap, (cap - 1.0 / R) / np.maximum(top - 1.0 / R, 1e-12), 1.0)
    return t * A + (1.0 - t) / R


def _holes(shape: tuple[int, int], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Nodata mask (H, W): random discs of radius 2-6 px until ``fraction`` of the pixels is covered."""
    H, W = shape
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[:H, :W]
    while mask.mean() < fraction:
        cy, cx, r = rng.integers(0, H), rng.integers(0, W), rng.uniform(2.0, 6.0)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return mask


def _pixel_spectra(Em: np.ndarray, n: int, variability: float, bundles: Sequence[Any] | None,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """Every pixel's endmember spectra ``(n, bands, R)`` (or ``(bands, R)`` when they do not vary) and
    the bundle member indices ``(R, n)``."""
    b, R = Em.shape
    members = None
    if bundles is not None:
        if len(bundles) != R:
            raise ValueError(f"bundles has {len(bundles)} classes, E has {R} endmembers")
        mats = [_endmember_matrix(B) if np.ndim(B) == 2 else np.asarray(B, float)[:, None] for B in bundles]
        if any(m.shape[0] != b for m in mats):
            raise ValueError(f"every bundle needs {b} bands, like E")
        members = np.stack([rng.integers(0, m.shape[1], size=n) for m in mats])
        P = np.stack([m[:, members[r]].T for r, m in enumerate(mats)], axis=-1)  # (n, b, R)
    else:
        P = Em
    if variability > 0:
        # smooth multiplicative curves along the spectrum: 1 + variability * g, g of unit std
        g = _field((n * R, 1, b), max(b / 12.0, 1.0), rng).reshape(n, R, b).transpose(0, 2, 1)
        P = np.clip(P * (1.0 + variability * g), 0.0, None)
    return P, members


def _check_scene_args(R: int, max_abundance: float | None, brightness: tuple[float, float] | None,
                      variability: float, nodata_fraction: float) -> None:
    if max_abundance is not None and not 1.0 / R < max_abundance <= 1.0:
        raise ValueError(f"max_abundance must be in (1/R, 1] = ({1.0 / R:.3g}, 1], got {max_abundance}")
    if brightness is not None and not 0 < brightness[0] <= brightness[1]:
        raise ValueError(f"brightness must be (low, high) with 0 < low <= high, got {brightness}")
    if not 0.0 <= variability < 1.0:
        raise ValueError(f"variability must be in [0, 1), got {variability}")
    if not 0.0 <= nodata_fraction <= 0.5:
        raise ValueError(f"nodata_fraction must be in [0, 0.5], got {nodata_fraction}")


def simulate_scene(
    E: Any,
    shape: tuple[int, int] = (64, 64),
    *,
    seed: int | np.random.Generator | None = None,
    snr_db: float | None = 30.0,
    smoothness: float = 6.0,
    sharpness: float = 3.0,
    max_abundance: float | None = None,
    brightness: tuple[float, float] | None = None,
    variability: float = 0.0,
    bundles: Sequence[Any] | None = None,
    nodata_fraction: float = 0.0,
) -> SimulatedScene:
    """A synthetic scene with spatial structure and the effects of real scenes (module docstring).

    Abundances: ``R`` standardised Gaussian random fields (filter ``smoothness`` px) through
    ``softmax(sharpness * f)``; a larger ``sharpness`` gives more near-pure pixels. Every pixel's
    spectrum is ``y = s * sum_r a_r e_r + n``.

    Parameters
    ----------
    E : DataArray (band, endmember) or array (bands, R)
        Reference spectra (reflectance); a ``wavelength`` coordinate is carried to the cube.
    shape : (int, int)
        ``(H, W)`` in pixels.
    seed : int or numpy Generator, optional
    snr_db : float or None
        White Gaussian noise, ``10 log10(mean(y^2) / sigma^2)`` over the valid pixels, dB; ``None``: none.
    smoothness, sharpness : float
        Filter size of the abundance fields (px) and the softmax gain.
    max_abundance : float, optional
        No pure pixels: each pixel is shrunk towards the uniform mixture until its largest fraction is
        at most this (in ``(1/R, 1]``).
    brightness : (float, float), optional
        Per-pixel scale ``s`` (topography, shade): a smooth field (``2 * smoothness`` px) spanning
        ``[low, high]``; the abundances stay the fractions (the scaled linear mixing model).
    variability : float
        Relative amplitude of each pixel's own smooth multiplicative perturbation of every spectrum
        (``e * (1 + variability * g)``, ``g`` a unit-std random curve along the bands), in ``[0, 1)``.
    bundles : sequence of R arrays (bands, k_r), optional
        Class bundles: every pixel draws its spectrum of class ``r`` uniformly from ``bundles[r]``.
    nodata_fraction : float
        Fraction (``<= 0.5``) of the pixels set to NaN in every band, as random discs of 2-6 px radius.

    Returns
    -------
    SimulatedScene
        ``cube`` (band, y, x) float32, ``abundances`` (endmember, y, x), ``endmembers`` (band,
        endmember), ``brightness`` (y, x), ``members`` (R, y, x) or None.
    """
    import xarray as xr

    from ._cube import as_endmembers

    Eda = as_endmembers(E)
    Em = _endmember_matrix(Eda)
    b, R = Em.shape
    H, W = (int(v) for v in shape)
    _check_scene_args(R, max_abundance, brightness, float(variability), float(nodata_fraction))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    f = sharpness * _field((R, H, W), smoothness, rng).reshape(R, -1)
    A = np.exp(f - f.max(0))
    A /= A.sum(0)
    if max_abundance is not None:
        A = _cap_abundances(A, float(max_abundance))
    s = np.ones(H * W)
    if brightness is not None:
        g = _field((1, H, W), 2.0 * smoothness, rng).ravel()
        lo, hi = brightness
        s = lo + (hi - lo) * (g - g.min()) / max(g.max() - g.min(), 1e-12)
    P, members = _pixel_spectra(Em, H * W, float(variability), bundles, rng)
    Y = np.einsum("nbr,rn->nb", P, A) if P.ndim == 3 else A.T @ P.T
    Y *= s[:, None]
    hole = _holes((H, W), float(nodata_fraction), rng).ravel()
    Y[~hole] = add_noise(Y[~hole], snr_db, rng)
    Y[hole] = np.nan
    coords = {"y": np.arange(H), "x": np.arange(W)}
    band_coords = {k: v for k, v in Eda.coords.items() if v.dims == ("band",)}
    cube = xr.DataArray(Y.T.reshape(b, H, W).astype(np.float32), dims=("band", "y", "x"),
                        coords={**band_coords, **coords}, name="reflectance")
    ab = xr.DataArray(A.reshape(R, H, W).astype(np.float32), dims=("endmember", "y", "x"),
                      coords={"endmember": Eda.endmember.values, **coords}, name="abundance")
    return SimulatedScene(cube, ab, Eda, xr.DataArray(s.reshape(H, W), dims=("y", "x"), coords=coords),
                          None if members is None else members.reshape(R, H, W))


class _CallableModule(types.ModuleType):
    """``xr_unmix.simulate`` names both this module and its function; importing the module (e.g.
    ``from xr_unmix.simulate import simulate``) binds the *module* to the package attribute, so the
    module forwards calls to :func:`simulate` to keep ``xr_unmix.simulate(E, n, ...)`` working."""

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        return simulate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
