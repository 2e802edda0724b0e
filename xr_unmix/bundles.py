"""Bundle unmixing: class libraries, Monte Carlo draws of endmember sets, class fractions with their
spread; and MESMA, the best draw per pixel.

The approach of EMIT's fractional-cover product and of the Julia package SpectralUnmixing (emit-sds):
a library holds many spectra per class; each Monte Carlo draw picks a *class-even* set of spectra
(classes in a random order, one spectrum from each in turn, up to ``max_endmembers`` spectra, so that
with at least as many endmembers as classes every class is in every draw), unmixes every pixel with
it, and sums the fractions per class. The mean over the draws is the class fraction, their standard
deviation its uncertainty. ``mode="mesma"`` instead keeps, per pixel, the draw whose reconstruction
residual is lowest.

Design
------
- A draw is the same endmember set for every pixel, so one draw is one batched solve over a whole
  block with the package's FCLS solver (:func:`xr_unmix.solvers.fcls`), never a loop over pixels.
- The draws are made once, from ``seed`` alone, before any block is read: a pixel's result depends
  on its spectrum and the draws only, not on the chunking or the scheduler (numpy, threads or a
  cluster give the same numbers).
- Pixel-wise, so a dask cube is mapped block by block (:func:`xr_unmix.tiling.map_tiles`, no halo);
  the mean and variance are accumulated over the draws (Welford), so memory is that of one draw.
- ``normalization="brightness"``: every pixel and every library spectrum is divided by its RMS over
  the bands outside 1300-1500 nm and 1800-2000 nm (SpectralUnmixing's brightness normalisation), so
  that the draws compare shapes, not brightness.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from ._cube import BAND, ENDMEMBER, check_dims, check_units, finish, prepare_cube
from .bundle_draws import class_even_draws, draw_sets  # noqa: F401  (public here too)
from .errors import InputError, InputTypeError, ParameterError, WavelengthMismatchError
from .runtime import torch_threads
from .tiling import map_tiles

#: Wavelength windows (nm) left out of the brightness norm, as SpectralUnmixing does.
BRIGHTNESS_IGNORE = ((1300.0, 1500.0), (1800.0, 2000.0))

MODES = ("sma", "mesma")
METHODS = ("fcls", "nnls")


def _positive_int(value: Any, name: str) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}").about(name) from None
    if out != value or out < 1:
        raise ParameterError(f"{name} must be an integer >= 1, got {value!r}").about(name)
    return out


def check_params(n_mc: int, max_endmembers: int | Sequence[int], normalization: str | None,
                 method: str, mode: str, penalty: float = 0.0,
                 ) -> tuple[int, tuple[int, ...], str | None]:
    """Refuse parameters out of range before any work: ``n_mc`` < 1, a set size < 1 (or none), a
    negative ``mesma_penalty``, an unknown ``normalization``, ``method`` or ``mode``
    (:class:`ParameterError`). Returns ``(n_mc, set sizes ascending, normalization)``."""
    n = _positive_int(n_mc, "n_mc")
    many = isinstance(max_endmembers, Sequence) and not isinstance(max_endmembers, str)
    sizes = list(max_endmembers) if many else [max_endmembers]
    if not sizes:
        raise ParameterError("max_endmembers is an empty sequence; give a set size such as 3 or "
                             "(2, 3)").about("max_endmembers")
    k = tuple(sorted({_positive_int(v, "max_endmembers") for v in sizes}))
    if not (np.isfinite(penalty) and penalty >= 0):
        raise ParameterError(f"mesma_penalty must be a finite number >= 0, got {penalty!r}").about(
            "mesma_penalty")
    norm = None if normalization in (None, "none") else normalization
    if norm not in (None, "brightness"):
        raise ParameterError(f"normalization must be None or 'brightness', got "
                             f"{normalization!r}").about("normalization")
    if method not in METHODS:
        raise ParameterError(f"method must be one of {METHODS}, got {method!r}").about("method")
    if mode not in MODES:
        raise ParameterError(f"mode must be one of {MODES}, got {mode!r}").about("mode")
    return n, k, norm


# -- the library -----------------------------------------------------------------------------------

def library_classes(library: xr.DataArray, classes: Sequence[str] | None = None,
                    ) -> tuple[xr.DataArray, list[str]]:
    """The library restricted to ``classes`` (default: all, in order of first appearance).

    Raises :class:`InputError` for a library without a ``class`` coordinate, a spectrum with an empty
    class, or a class asked for that has no spectra.
    """
    if not isinstance(library, xr.DataArray):
        raise InputTypeError(f"the library must be a DataArray (band, endmember) with a 'class' "
                             f"coordinate, got {type(library).__name__} (read one with "
                             "xr_unmix.read_endmembers)")
    check_dims(library, (BAND, ENDMEMBER))
    if "class" not in library.coords or library.coords["class"].dims != (ENDMEMBER,):
        raise InputError("the library has no 'class' coordinate on 'endmember'; read a row-wise "
                         "class CSV, pass read_endmembers(..., classes=...), or assign_coords(class=...)")
    cls = [str(c) for c in library.coords["class"].values]
    if any(not c.strip() for c in cls):
        raise InputError(f"spectrum {cls.index(next(c for c in cls if not c.strip())) + 1} of the "
                         "library has an empty class")
    present = list(dict.fromkeys(cls))
    if classes is None:
        return library, present
    want = [str(c) for c in classes]
    if not want:
        raise InputError("classes is empty; name at least one class of the library")
    empty = [c for c in want if c not in present]
    if empty:
        raise InputError(f"class {empty[0]!r} has no spectra in the library (its classes: "
                         f"{', '.join(present)})")
    keep = np.isin(np.array(cls, dtype=object), want)
    return library.isel({ENDMEMBER: np.flatnonzero(keep)}), want


def _library_on_cube(library: xr.DataArray, cube_wl: np.ndarray | None, n_bands: int) -> np.ndarray:
    """The library's spectra on the cube's bands, ``(bands, n_spectra)`` float64.

    With wavelengths on both sides the library is interpolated onto the cube's
    (:func:`xr_unmix.resample_spectra`) after dropping the bands where every spectrum is 0 (EMIT's
    libraries zero their water-vapour bands); a cube band outside the library's range or inside a gap
    of its sampling raises :class:`WavelengthMismatchError`. Otherwise the band counts must agree.
    """
    from ._cube import as_endmembers, wavelength_tolerance
    from .endmembers import resample_spectra

    values = np.asarray(library.values, dtype=np.float64)
    zero = np.all(values == 0, axis=1)  # a band no spectrum has a value for
    if cube_wl is None or "wavelength" not in library.coords:
        E = as_endmembers(library, n_bands).values
        if zero.any():
            raise InputError(f"the library is 0 in every spectrum at {int(zero.sum())} bands (e.g. "
                             f"band {int(np.flatnonzero(zero)[0]) + 1}): missing data; drop those "
                             "bands from the cube and the library")
        return E
    lib_wl = np.asarray(library.coords["wavelength"].values, dtype=np.float64)
    good = np.isfinite(lib_wl) & ~zero
    same = lib_wl.shape == cube_wl.shape and bool(np.all(
        np.abs(lib_wl - cube_wl) <= wavelength_tolerance(cube_wl)))
    if same:
        out = ~good
    else:
        from .library import _uncovered

        out = _uncovered(lib_wl[good], cube_wl) if good.any() else np.ones(cube_wl.size, bool)
    if out.any():
        bad = cube_wl[out]
        span = f"{lib_wl[good].min():.0f}-{lib_wl[good].max():.0f} nm" if good.any() else "nothing"
        raise WavelengthMismatchError(
            f"the library does not cover {int(out.sum())} of the cube's {cube_wl.size} bands "
            f"({', '.join(f'{w:.0f}' for w in bad[:5])}{'...' if bad.size > 5 else ''} nm): it spans "
            f"{span}, with gaps where its values are missing or 0. Drop those bands from the cube "
            "first (e.g. cube.isel(band=...), or xr_unmix.open_cube(..., bad_bands='drop'))")
    if same:
        return as_endmembers(library, n_bands).values
    lib = library.isel({BAND: np.flatnonzero(good)})
    return np.asarray(resample_spectra(lib, cube_wl).values, dtype=np.float64)


def brightness_bands(wavelengths: np.ndarray | None, n_bands: int) -> np.ndarray:
    """Which bands enter the brightness norm: all but :data:`BRIGHTNESS_IGNORE` (all without
    wavelengths, or if that would leave none)."""
    if wavelengths is None:
        return np.ones(n_bands, dtype=bool)
    wl = np.asarray(wavelengths, dtype=np.float64)
    keep = np.ones(n_bands, dtype=bool)
    for lo, hi in BRIGHTNESS_IGNORE:
        keep &= ~((wl >= lo) & (wl <= hi))
    return keep if keep.any() else np.ones(n_bands, dtype=bool)


def brightness_normalize(spectra: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """``spectra`` (bands, n) divided by their RMS over ``bands``; a zero norm gives NaN."""
    norm = np.sqrt(np.mean(spectra[bands] ** 2, axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return spectra / np.where(norm > 0, norm, np.nan)


# -- the kernel ------------------------------------------------------------------------------------

class BundleKernel:
    """Picklable kernel: all Monte Carlo draws over one block ``(bands, h, w)``.

    Returns ``(2 C [+ 2], h, w)``: the class fractions (mean over draws, or the best draw's under
    MESMA), their standard deviation over the draws, and under MESMA the RMSE of the chosen draw and
    its number of spectra. MESMA scores a draw of ``k`` spectra ``rmse + penalty * (k - k0)``
    (``k0`` the smallest set size) and keeps the lowest score; a draw replaces the best only with a
    strictly lower score, so ties go to the earlier draw, and so to the smaller set.
    """

    def __init__(self, spectra: np.ndarray, class_index: np.ndarray, n_classes: int,
                 draws: Sequence[np.ndarray], *, method: str = "fcls", mode: str = "sma",
                 norm_bands: np.ndarray | None = None, penalty: float = 0.0) -> None:
        self.spectra = spectra
        self.class_index = class_index
        self.n_classes = n_classes
        self.draws = draws
        self.method = method
        self.mode = mode
        self.norm_bands = norm_bands
        self.penalty = float(penalty)
        self._onehot = (np.arange(n_classes)[:, None] == class_index[None, :]).astype(np.float64)

    @property
    def n_out(self) -> int:
        return 2 * self.n_classes + (2 if self.mode == "mesma" else 0)

    def _solve(self, Y: np.ndarray, E: np.ndarray) -> np.ndarray:
        from .solvers import fcls, nnls

        solve = fcls if self.method == "fcls" else nnls
        A = solve(Y, E, dtype="float64", warn=False).cpu().numpy()
        if self.method == "nnls":  # SpectralUnmixing's bounded solve, then fractions of the total
            with np.errstate(divide="ignore", invalid="ignore"):
                A = A / A.sum(axis=0, keepdims=True)
        return A

    def __call__(self, block: np.ndarray) -> np.ndarray:
        b, h, w = block.shape
        Y = block.reshape(b, h * w).astype(np.float64)
        if self.norm_bands is not None:
            Y = brightness_normalize(Y, self.norm_bands)
        C, n = self.n_classes, h * w
        mean = np.zeros((C, n))
        m2 = np.zeros((C, n))
        best = np.full((C, n), np.nan)
        best_r = np.full(n, np.inf)
        best_s, best_k = np.full(n, np.inf), np.full(n, np.nan)
        k0 = min(len(c) for c in self.draws)
        with torch_threads():
            for d, cols in enumerate(self.draws, start=1):
                E = self.spectra[:, cols]
                A = self._solve(Y, E)
                F = self._onehot[:, cols] @ A  # class fractions of this draw, (C, n)
                delta = F - mean
                mean += delta / d
                m2 += delta * (F - mean)
                if self.mode == "mesma":
                    r = np.sqrt(np.mean((Y - E @ A) ** 2, axis=0))
                    score = r + self.penalty * (len(cols) - k0)
                    better = score < best_s
                    best[:, better] = F[:, better]
                    best_r[better], best_s[better], best_k[better] = r[better], score[better], len(cols)
        n_mc = len(self.draws)
        std = np.sqrt(m2 / (n_mc - 1)) if n_mc > 1 else np.zeros_like(m2)
        parts = [best if self.mode == "mesma" else mean, std]
        if self.mode == "mesma":
            parts += [np.where(np.isfinite(best_r), best_r, np.nan)[None], best_k[None]]
        out = np.concatenate(parts, axis=0)
        out[:, ~np.isfinite(Y).all(axis=0)] = np.nan
        return out.reshape(-1, h, w)


# -- the public function ---------------------------------------------------------------------------

def bundles(
    cube: xr.DataArray,
    library: xr.DataArray,
    *,
    n_mc: int = 50,
    max_endmembers: int | Sequence[int] = 3,
    normalization: str | None = None,
    method: str = "fcls",
    seed: int | None = 0,
    mode: str = "sma",
    classes: Sequence[str] | None = None,
    mesma_penalty: float = 0.0,
) -> xr.Dataset:
    """Bundle unmixing with Monte Carlo uncertainty (SMA) or per-pixel best draws (MESMA).

    Parameters
    ----------
    cube : DataArray (band, y, x), any dim order, numpy- or dask-backed
        Reflectance (0-1). NaN or nodata in any band marks a pixel invalid (NaN out).
    library : DataArray (band, endmember) with a ``class`` coordinate on ``endmember``
        Many spectra per class (:func:`xr_unmix.read_endmembers`,
        ``xr_unmix.library.load_library("earthlib")``). With wavelengths on both sides it is
        interpolated onto the cube's; without, its band count must be the cube's.
    n_mc : int
        Monte Carlo draws (>= 1); under MESMA, the candidate endmember sets.
    max_endmembers : int or sequence of int
        Spectra per draw (>= 1), picked class-even (see :func:`class_even_draws`). A sequence, e.g.
        ``(2, 3)``, draws ``n_mc`` sets of each size (SpectralUnmixing's ``--num_endmembers`` list):
        under MESMA a pixel may then be modelled by fewer spectra; under SMA the mean is over all.
    normalization : None or "brightness"
        Divide pixels and spectra by their RMS outside 1300-1500 and 1800-2000 nm first.
    method : {"fcls", "nnls"}
        ``fcls``: the package's batched fully constrained LS. ``nnls``: non-negative LS, then the
        fractions divided by their sum (SpectralUnmixing's bounded solve and normalisation).
    seed : int or None
        Seed of the draws (they depend on it alone: numpy, dask and a cluster agree).
    mode : {"sma", "mesma"}
        ``sma``: fraction = mean over the draws. ``mesma``: fraction = the draw with the lowest
        residual at that pixel.
    mesma_penalty : float
        MESMA with several set sizes: added to a draw's RMSE (in the cube's units, reflectance) for
        each spectrum beyond the smallest set size before the draws are compared, so that a larger
        set must lower the RMSE by more than that to be chosen (e.g. 0.002). Default 0: the lowest
        RMSE wins, as SpectralUnmixing chooses; a larger set then nearly always wins, since it fits
        at least as well up to the solver's tolerance. Equal scores keep the earlier draw; draws run
        smallest sets first, so a tie goes to the smaller set.
    classes : sequence of str, optional
        The classes to unmix into (default: all the library's). A class without spectra is an error.

    Returns
    -------
    Dataset with, on the cube's ``y``/``x`` (and CRS/transform):

    - ``fraction`` (class, y, x): class fractions, summing to one (mean over the draws; under MESMA
      the best draw's);
    - ``uncertainty`` (class, y, x): their standard deviation over the draws (``ddof=1`` as in
      SpectralUnmixing; 0 with ``n_mc=1``);
    - ``rmse`` (y, x), MESMA only: the chosen draw's reconstruction RMSE (normalised units under
      ``normalization="brightness"``);
    - ``n_endmembers`` (y, x), MESMA with several set sizes only: the number of spectra in the
      chosen draw.

    NaN where the input pixel is invalid. Lazy (dask) when the cube is.

    Raises
    ------
    ParameterError
        ``n_mc`` or a set size < 1, a negative ``mesma_penalty``, an unknown ``normalization``,
        ``method`` or ``mode``.
    InputError
        A library without classes, a class with no spectra.
    WavelengthMismatchError, BandMismatchError
        A library whose wavelengths do not cover the cube's bands, or another band count.
    """
    n, k, norm = check_params(n_mc, max_endmembers, normalization, method, mode, mesma_penalty)
    check_dims(cube)
    lib, names = library_classes(library, classes)
    data, facts = prepare_cube(cube, np.float64 if cube.dtype == np.float64 else np.float32)
    spectra = _library_on_cube(lib, facts.wavelengths, facts.n_bands)
    check_units(cube, spectra)
    lib_cls = [str(c) for c in lib.coords["class"].values]
    class_index = np.array([names.index(c) for c in lib_cls], dtype=np.int64)
    draws = draw_sets(class_index, len(names), n, k, seed)
    bands = brightness_bands(facts.wavelengths, facts.n_bands) if norm else None
    if bands is not None:
        spectra = brightness_normalize(spectra, bands)
    kernel = BundleKernel(spectra, class_index, len(names), draws, method=method, mode=mode,
                          norm_bands=bands, penalty=mesma_penalty)
    out = map_tiles(data, kernel, kernel.n_out, dtype=np.float32)
    attrs = {"method": f"bundles_{mode}", "solver": method, "n_mc": n,
             "max_endmembers": k[0] if len(k) == 1 else ",".join(map(str, k)),
             **({"mesma_penalty": float(mesma_penalty)} if mode == "mesma" and len(k) > 1 else {}),
             "normalization": norm or "none", "seed": "none" if seed is None else int(seed),
             "library_spectra": int(lib.sizes[ENDMEMBER]),
             "library_source": str(lib.attrs.get("source", "")) or "none"}
    C = len(names)
    per = {"fraction": out[:C], "uncertainty": out[C:2 * C]}
    ds = xr.Dataset({key: finish(arr, cube, names, attrs, name=key, facts=facts).rename(
        {ENDMEMBER: "class"}) for key, arr in per.items()})
    ds["uncertainty"].attrs["long_name"] = "standard deviation of the class fraction over the draws"
    if mode == "mesma":
        ds["rmse"] = finish(out[2 * C:2 * C + 1], cube, ["rmse"], attrs, name="rmse",
                            facts=facts).isel({ENDMEMBER: 0}, drop=True)
        ds["rmse"].attrs["units"] = "reflectance" if norm is None else "1 (brightness-normalised)"
    if mode == "mesma" and len(k) > 1:
        ds["n_endmembers"] = finish(out[2 * C + 1:], cube, ["n"], attrs, name="n_endmembers",
                                    facts=facts).isel({ENDMEMBER: 0}, drop=True)
        ds["n_endmembers"].attrs.update(units="1", long_name="spectra in the chosen draw")
    ds.attrs = dict(ds["fraction"].attrs)
    return ds

