"""Public free functions: cube in, georeferenced abundances out.

Each function validates its input (:mod:`xr_unmix._cube`), builds a plain-array kernel, runs it through
:func:`xr_unmix.tiling.map_tiles` and wraps the result with :func:`xr_unmix._cube.finish`. The accessor
``cube.unmix`` only forwards here.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import xarray as xr

from ._cube import as_endmembers, check_dims, check_units, check_wavelengths, finish, prepare_cube
from ._workers import ModelKernel
from .errors import InputTypeError, ParameterError
from .runtime import torch_threads
from .tiling import TileSpec, map_tiles

#: Most ADMM iterations :func:`sunsal` accepts (``tol=0`` runs exactly ``max_iter``): a bound on the
#: work per pixel, so that a mistyped ``max_iter=1e9`` is refused instead of running for days.
MAX_ITER = 100_000

ModelLike = Any  # an xr_unmix model instance, or a path to a saved one


def _np_dtype(dtype: Any) -> np.dtype:
    name = str(dtype).replace("torch.", "")
    if name not in ("float32", "float64"):
        raise ParameterError(f"dtype must be float32 or float64, got {dtype!r}")
    return np.dtype(name)


class _SunsalKernel:
    """Picklable kernel: SUnSAL on every pixel of a block.

    Tiled with ``SPEC``: pixel-wise, and ``handles_nan`` since :func:`~xr_unmix.solvers.sunsal_solve`
    returns NaN for a pixel with NaN/inf in any band by itself (no mask pass, no zero-filled copy of
    every block).
    """

    SPEC = TileSpec(handles_nan=True)

    def __init__(self, E: np.ndarray, params: dict[str, Any]) -> None:
        self.E = E
        self.params = params

    def __call__(self, block: np.ndarray) -> np.ndarray:
        from .solvers.sunsal import sunsal_solve

        b, h, w = block.shape
        with torch_threads():
            out = sunsal_solve(block.reshape(b, h * w), self.E, **self.params)
        return out.cpu().numpy().reshape(-1, h, w)


def sunsal(
    cube: xr.DataArray,
    endmembers: Any,
    *,
    lam: float = 0.0,
    anc: bool = True,
    asc: bool = True,
    max_iter: int = 1000,
    tol: float = 1e-4,
    mu: float | None = None,
    adaptive_mu: bool = True,
    device: str = "cpu",
    dtype: str = "float32",
    progress: bool | None = None,
) -> xr.DataArray:
    """Unmix with SUnSAL (Bioucas-Dias & Figueiredo, 2010).

    Parameters
    ----------
    cube : DataArray (band, y, x), any dim order, numpy- or dask-backed
        Reflectance (any scale; integer cubes are cast). NaN or nodata in any band marks a pixel invalid.
    endmembers : DataArray (band, endmember) or array (bands, R)
        Same band count as the cube.
    lam : float
        l1 sparsity weight (0: plain constrained least squares).
    anc, asc : bool
        Non-negativity and sum-to-one constraints. ``lam=0, anc=asc=True`` is FCLS.
    max_iter, tol, mu, adaptive_mu
        ADMM controls, see :func:`xr_unmix.solvers.sunsal_solve` (``max_iter`` at most
        :data:`MAX_ITER`).
    device : str
        ``"cpu"`` or ``"cuda"``.
    dtype : {"float32", "float64"}
    progress : bool, optional
        For an in-memory (numpy) cube, a tqdm bar over its pixels while it solves (``None``: only when
        stderr is a terminal). A dask-backed cube is lazy: its writers' ``progress=`` shows a bar over
        the tasks instead.

    Returns
    -------
    DataArray (endmember, y, x)
        Abundances; NaN where the input pixel was invalid; lazy if the cube is dask-backed.
    """
    check_dims(cube)
    _check_solver_params(lam, max_iter, tol)
    np_dtype = _np_dtype(dtype)
    # A float32/float64 cube is passed through as it is: sunsal_solve converts each batch to the
    # compute dtype itself, so no full-size cast of the cube (400 MiB for a 512x512x200 float32 cube
    # solved in float64). Other dtypes (integers, float16) are cast to the compute dtype.
    in_dtype = np.dtype(cube.dtype)
    data, facts = prepare_cube(cube, in_dtype if in_dtype in (np.float32, np.float64) else np_dtype)
    E = as_endmembers(endmembers, facts.n_bands)
    check_wavelengths(facts.wavelengths, E)
    check_units(cube, E.values)
    params = dict(lam=float(lam), anc=bool(anc), asc=bool(asc), max_iter=int(max_iter), tol=float(tol),
                  mu=mu, adaptive_mu=bool(adaptive_mu), device=device, dtype=np_dtype.name)
    eager = cube.chunks is None
    show = bool(sys.stderr.isatty() if progress is None else progress) and eager
    kernel = _SunsalKernel(E.values.astype(np_dtype), {**params, "progress": show} if show else params)
    out = map_tiles(data, kernel, E.sizes["endmember"], _SunsalKernel.SPEC, dtype=np_dtype)
    attrs = {"method": "sunsal", **{k: v for k, v in params.items() if k not in ("device",)}}
    return with_endmember_coords(finish(out, cube, list(E.endmember.values), attrs, facts=facts), E)


def with_endmember_coords(result: xr.DataArray, endmembers: xr.DataArray) -> xr.DataArray:
    """``result`` with the endmembers' coordinates along ``endmember`` (``class``, ``material``, ...),
    so that ``result.groupby("class").sum()`` gives class fractions."""
    extra = {k: ("endmember", np.asarray(c.values)) for k, c in endmembers.coords.items()
             if c.dims == ("endmember",) and k != "endmember"}
    return result.assign_coords(extra) if extra else result


def _check_solver_params(lam: float, max_iter: int, tol: float) -> None:
    """Refuse a negative or non-finite ``lam`` (and a senseless ``max_iter``/``tol``) before any
    work is scheduled."""
    try:
        lam_f, it, tol_f = float(lam), int(max_iter), float(tol)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"lam, max_iter and tol must be numbers: {exc}") from exc
    if not (np.isfinite(lam_f) and lam_f >= 0):
        raise ParameterError(f"lam must be a finite number >= 0 (the l1 weight), got {lam}")
    if not 1 <= it <= MAX_ITER:
        raise ParameterError(f"max_iter must be in [1, {MAX_ITER}], got {max_iter}")
    if not (np.isfinite(tol_f) and tol_f >= 0):
        raise ParameterError(f"tol must be a finite number >= 0, got {tol}")


_LS_DOC = """{summary}: :func:`sunsal` with ``lam=0, anc={anc}, asc={asc}``.

    Parameters
    ----------
    cube : DataArray (band, y, x), any dim order, numpy- or dask-backed
        Reflectance; NaN or nodata in any band marks a pixel invalid.
    endmembers : DataArray (band, endmember) or array (bands, R)
        Same band count as the cube.
    max_iter, tol, mu, adaptive_mu, device, dtype, progress
        As in :func:`sunsal`.

    Returns
    -------
    DataArray (endmember, y, x)
        Abundances (``attrs["method"] == "{method}"``); NaN where the input pixel was invalid; lazy
        if the cube is dask-backed.
    """


def _least_squares(method: str, anc: bool, asc: bool, cube: xr.DataArray, endmembers: Any,
                   **solver: Any) -> xr.DataArray:
    """:func:`sunsal` without the l1 term, labelled ``method`` (fcls, nnls, ls)."""
    out = sunsal(cube, endmembers, lam=0.0, anc=anc, asc=asc, **solver)
    out.attrs["method"] = method
    return out


def fcls(cube: xr.DataArray, endmembers: Any, *, max_iter: int = 1000, tol: float = 1e-4,
         mu: float | None = None, adaptive_mu: bool = True, device: str = "cpu",
         dtype: str = "float32", progress: bool | None = None) -> xr.DataArray:
    return _least_squares("fcls", True, True, cube, endmembers, max_iter=max_iter, tol=tol, mu=mu,
                          adaptive_mu=adaptive_mu, device=device, dtype=dtype, progress=progress)


def nnls(cube: xr.DataArray, endmembers: Any, *, max_iter: int = 1000, tol: float = 1e-4,
         mu: float | None = None, adaptive_mu: bool = True, device: str = "cpu",
         dtype: str = "float32", progress: bool | None = None) -> xr.DataArray:
    return _least_squares("nnls", True, False, cube, endmembers, max_iter=max_iter, tol=tol, mu=mu,
                          adaptive_mu=adaptive_mu, device=device, dtype=dtype, progress=progress)


def ls(cube: xr.DataArray, endmembers: Any, *, max_iter: int = 1000, tol: float = 1e-4,
       mu: float | None = None, adaptive_mu: bool = True, device: str = "cpu",
       dtype: str = "float32", progress: bool | None = None) -> xr.DataArray:
    return _least_squares("ls", False, False, cube, endmembers, max_iter=max_iter, tol=tol, mu=mu,
                          adaptive_mu=adaptive_mu, device=device, dtype=dtype, progress=progress)


fcls.__doc__ = _LS_DOC.format(summary="Fully constrained least squares (abundances >= 0, summing "
                              "to one)", anc=True, asc=True, method="fcls")
nnls.__doc__ = _LS_DOC.format(summary="Non-negative least squares (abundances >= 0)", anc=True,
                              asc=False, method="nnls")
ls.__doc__ = _LS_DOC.format(summary="Unconstrained least squares", anc=False, asc=False,
                            method="ls")


# -- networks -------------------------------------------------------------------------------------

def _resolve_model(model: ModelLike, expected: type | None) -> Any:
    from .models.base import UnmixModel, load_model

    if isinstance(model, str | os.PathLike):
        model = load_model(model)
    if not isinstance(model, UnmixModel):
        raise InputTypeError(f"expected an xr_unmix model or a path to one, got "
                             f"{type(model).__name__}")
    if expected is not None and not isinstance(model, expected):
        raise InputTypeError(f"expected a {expected.__name__} model, got a {type(model).__name__}")
    return model


def apply_model(
    cube: xr.DataArray,
    model: ModelLike,
    *,
    expected: type | None = None,
    device: str = "cpu",
    halo: int | None = None,
    method: str | None = None,
    batch_size: int | None = None,
) -> xr.DataArray:
    """Apply a trained xr_unmix network to a cube, tile by tile.

    Parameters
    ----------
    cube : DataArray (band, y, x)
    model : UnmixModel or path
    expected : type, optional
        Raise :class:`TypeError` unless the model is an instance of this class.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    halo : int, optional
        Tile overlap; default the model's ``tile_spec.halo`` (0 for pixel-wise nets). Stitching
        (blend or crop) always follows the model's ``tile_spec``.
    method : str, optional
        Name recorded in ``attrs["method"]``.
    batch_size : int, optional
        Pixel-wise models only: pixels per forward pass (bounds the activations' memory, e.g. on a
        GPU); default a whole tile at once.

    Notes
    -----
    For models that record inner solves (a non-empty ``solve_stats``, e.g. :class:`~xr_unmix.DEQUnmix`)
    and a numpy-backed cube (computed at once), the stats of this call are copied into the result's
    attrs (``solver_n_solves``, ``solver_n_unconverged``, ``solver_max_residual``,
    ``solver_max_iterations``) and the model's ``solve_stats`` are reset first. For a lazy result they
    accumulate on the model as the tiles are computed (local threads), and every non-converged solve
    warns.
    """
    m = _resolve_model(model, expected)
    data, facts = prepare_cube(cube, np.float32)
    m.check_bands(facts.n_bands)
    check_wavelengths(facts.wavelengths, m.endmembers, "the model's endmembers")
    check_units(cube, m.endmembers.values)
    if batch_size is not None:
        if int(batch_size) < 1:
            raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
        if not m.tile_spec.pixelwise:
            raise ParameterError(f"batch_size is for pixel-wise models; {type(m).__name__} sees "
                             "neighbourhoods (set the tile size through the cube's chunks)")
    m.eval()
    spec = _spec(m.tile_spec, halo)
    h = spec.halo
    eager = not hasattr(data, "dask")
    track = eager and bool(m.solve_stats)
    if track:
        m.reset_solve_stats()
    kernel = ModelKernel(m, device, np.dtype(np.float32), batch_size=batch_size)
    out = map_tiles(data, kernel, m.n_endmembers, spec)
    attrs = {"method": method or type(m).__name__, "model": type(m).__name__, "halo": h,
             **{f"model_{k}": v for k, v in m.config.items() if isinstance(v, int | float | str | bool)}}
    if batch_size is not None:
        attrs["batch_size"] = int(batch_size)
    if track:
        attrs.update({f"solver_{k}": (float(v) if isinstance(v, float) else int(v))
                      for k, v in dict(m.solve_stats).items() if k in m.SOLVE_STAT_KEYS})
    if isinstance(model, str | os.PathLike):
        attrs["model_path"] = str(model)
    return with_endmember_coords(finish(out, cube, m.endmember_names, attrs, facts=facts),
                                 m.endmembers)


def _spec(spec: TileSpec, halo: int | None) -> TileSpec:
    """The model's ``spec``, with the halo a caller asked for (``None``: the model's own)."""
    if halo is None:
        return spec
    try:
        h = int(halo)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"halo must be an integer >= 0, got {halo!r}") from exc
    if h < 0:
        raise ParameterError(f"halo must be >= 0, got {h}")
    return replace(spec, halo=h, pixelwise=spec.pixelwise and h == 0)


def admm(cube: xr.DataArray, model: ModelLike, *, device: str = "cpu",
         batch_size: int | None = None) -> xr.DataArray:
    """Unmix with a trained :class:`xr_unmix.UADMMNet` (or a path to one). Pixel-wise: no halo.

    ``batch_size`` pixels per forward pass (default: a whole tile); see :func:`apply_model`.
    """
    from .models.uadmm import UADMMNet

    return apply_model(cube, model, expected=UADMMNet, device=device, method="admm",
                       batch_size=batch_size)


def deq(cube: xr.DataArray, model: ModelLike, *, device: str = "cpu", halo: int | None = None,
        return_endmembers: bool = False) -> xr.DataArray | tuple[xr.DataArray, xr.DataArray]:
    """Unmix with a trained :class:`xr_unmix.DEQUnmix` (or a path to one), tiles overlapping by ``halo``.

    Overlapping tiles are blended (the model's ``tile_spec``), not cropped: a DEQ's receptive field
    grows with every iteration. Default halo: the model's ``tile_spec.halo`` (measured; see
    docs/deq.md; 0 for a pixel-wise operator, ``kernel_size=1``).

    With ``return_endmembers=True`` returns ``(abundances, endmembers)``: the model's (possibly
    refined) endmembers as a DataArray ``(band, endmember)`` carrying the cube's band coordinates
    (``band``, ``wavelength``).
    """
    from .models.deq import DEQUnmix

    m = _resolve_model(model, DEQUnmix)
    out = apply_model(cube, m, expected=DEQUnmix, device=device, halo=halo, method="deq")
    if isinstance(model, str | os.PathLike):
        out.attrs["model_path"] = str(model)
    if not return_endmembers:
        return out
    E = m.endmembers
    band_coords = {k: v for k, v in cube.coords.items() if v.dims == ("band",)}
    E = E.drop_vars([c for c, v in E.coords.items() if "band" in v.dims]).assign_coords(band_coords)
    return out, E
