"""From files on disk to a lazy abundance map: the method registry, endmember specs and
:func:`unmix_scene`, shared by the command line (:mod:`xr_unmix.cli`) and batch runs
(:mod:`xr_unmix.batch`).

Everything here raises the package's own errors (:mod:`xr_unmix.errors`), never a CLI exception, and
checks a request (:func:`check_request`) before any file is opened or any work scheduled: a negative
``lam`` or ``batch_size=0`` fails at once, not after the computation started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from . import api
from ._cube import check_units, check_wavelengths
from .endmembers import read_endmembers, resample_spectra
from .errors import (
    BandMismatchError,
    InputError,
    InputTypeError,
    MissingInputError,
    OutputExistsError,
    ParameterError,
    XrUnmixError,
)
from .extraction import endmembers_from_spec, is_extraction_spec
from .io import atomic as _atomic
from .io import open_abundance, open_cube, write
from .io.paths import check_raster_path
from .runtime import check_cuda

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Method:
    """An entry of :data:`METHODS`: what an estimator needs and which API function runs it."""

    name: str
    needs: Literal["endmembers", "model"]
    func: str  #: name of the function in :mod:`xr_unmix.api`
    model_class: str | None = None  #: class a model file must hold (``needs="model"``)
    takes_lam: bool = False
    takes_batch_size: bool = False


#: The estimators a scene can be unmixed with, by name (the CLI's ``--method``).
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sunsal", "endmembers", "sunsal", takes_lam=True),
    Method("fcls", "endmembers", "fcls"),
    Method("nnls", "endmembers", "nnls"),
    Method("ls", "endmembers", "ls"),
    Method("admm", "model", "admm", model_class="UADMMNet", takes_batch_size=True),
    Method("deq", "model", "deq", model_class="DEQUnmix"),
)}


def get_method(name: str) -> Method:
    """The :class:`Method` called ``name``; :class:`ParameterError` listing the known ones."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ParameterError(f"unknown method {name!r}; use one of "
                             f"{tuple(METHODS)}").about("method") from None


# -- checks before any work ------------------------------------------------------------------------

def parse_chunk(chunk: str | int) -> int | str:
    """A spatial tile size: a positive number of pixels, or ``"auto"``."""
    if chunk == "auto":
        return chunk
    try:
        value = int(chunk)
    except (TypeError, ValueError):
        raise ParameterError(f"chunk {chunk!r}: expected a number of pixels or "
                             "'auto'").about("chunk") from None
    if value < 1:
        raise ParameterError(f"chunk {chunk!r}: must be a positive number of pixels").about("chunk")
    return value


def check_endmember_spec(spec: str) -> None:
    """Refuse an endmember spec that cannot work: ``vca:x``, ``vca:1``, or a file that is missing."""
    if is_extraction_spec(spec):
        arg = spec.split(":", 1)[1].strip().lower() if ":" in spec else "auto"
        if arg != "auto" and not (arg.isdigit() and int(arg) >= 2):
            raise ParameterError(f"endmembers {spec!r}: use 'vca:N' with N >= 2 endmembers "
                                 "(e.g. 'vca:4') or 'vca:auto' (N from HySime)").about("endmembers")
        return
    if not Path(spec).is_file():
        raise MissingInputError(f"no endmember file at {spec} (give a CSV / ENVI .sli file, or "
                                "vca:N to extract N from the scene)").about("endmembers")


def check_device(device: str) -> None:
    """Refuse an unknown device, or ``cuda`` on a machine where torch sees no GPU."""
    d = str(device)
    if d == "cpu":
        return
    if not (d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
        raise ParameterError(f"device {device!r}: use 'cpu', 'cuda' or 'cuda:N'").about("device")
    check_cuda(d)


def check_request(method: str, *, endmembers: str | None = None, model: PathLike | None = None,
                  lam: float = 0.0, batch_size: int | None = None, device: str = "cpu",
                  local: bool = True) -> Method:
    """Check a run's parameters (the files it names exist, numbers in range) and return its method.

    ``local``: the computation runs on this machine (so a ``cuda`` device must exist here); with a
    remote scheduler the workers check their own device.
    """
    m = get_method(method)
    if m.needs == "model":
        if endmembers:
            raise ParameterError(f"method {method!r} takes its endmembers from the model; "
                                 "give no endmembers").about("endmembers")
        if not model:
            raise ParameterError(f"method {method!r} needs a trained model file (train one with "
                                 "xr_unmix.UADMMNet / DEQUnmix .fit, or `xr-unmix train`)"
                                 ).about("model")
        if not Path(model).is_file():
            raise MissingInputError(f"no model file at {model}").about("model")
    else:
        if not endmembers:
            raise ParameterError(f"method {method!r} needs endmembers (a CSV / ENVI file, or "
                                 "vca:N)").about("endmembers")
        check_endmember_spec(str(endmembers))
    try:
        lam_f = float(lam)
    except (TypeError, ValueError):
        raise ParameterError(f"lam must be a number, got {lam!r}").about("lam") from None
    if not (np.isfinite(lam_f) and lam_f >= 0):
        raise ParameterError(f"lam must be a finite number >= 0 (the l1 weight), got "
                             f"{lam}").about("lam")
    if lam_f and not m.takes_lam:
        raise ParameterError(f"lam is the l1 weight of method 'sunsal'; method {method!r} has "
                             "none").about("lam")
    if batch_size is not None:
        if not m.takes_batch_size:
            raise ParameterError(f"batch_size is for the pixel-wise method 'admm'; {method!r} sees "
                                 "neighbourhoods (set the tile size with chunk)").about("batch_size")
        if int(batch_size) < 1:
            raise ParameterError(f"batch_size must be >= 1 pixels, got "
                                 f"{batch_size}").about("batch_size")
    if local:
        check_device(device)
    return m


# -- inputs ----------------------------------------------------------------------------------------

def open_scene(path: PathLike, chunk: int | str | None = "auto") -> xr.DataArray:
    """:func:`xr_unmix.io.open_cube` (``chunk=None``: numpy-backed), with a missing or unreadable
    file as a package error. ``path``: a local file or any path GDAL opens (``NETCDF:f.nc:var``,
    ``/vsicurl/...``, ``s3://...``; :func:`xr_unmix.io.paths.check_raster_path`)."""
    path = check_raster_path(path)
    try:
        return open_cube(path, chunks=None if chunk is None else parse_chunk(chunk))
    except XrUnmixError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(str(exc)) from exc


def load_endmembers(spec: str, cube: xr.DataArray, *, resample: bool = False,
                    seed: int | None = None) -> xr.DataArray:
    """Endmembers for ``cube`` from a spec: ``FILE`` (CSV / ENVI) or ``vca:N`` / ``vca:auto``.

    A file's spectra are resampled onto the cube's wavelengths with ``resample=True``; otherwise their
    band count and (when both have them) wavelengths must match the cube's
    (:class:`BandMismatchError`, :class:`~xr_unmix.errors.WavelengthMismatchError`).
    """
    check_endmember_spec(spec)
    if is_extraction_spec(spec):
        try:
            return endmembers_from_spec(cube, spec, seed=seed)
        except XrUnmixError:
            raise
        except ValueError as exc:
            raise InputError(f"endmembers {spec}: {exc}") from exc
    try:
        E = read_endmembers(spec)
    except XrUnmixError:
        raise
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise InputError(f"cannot read endmembers from {spec}: {exc}") from exc
    if resample:
        if "wavelength" not in cube.coords:
            raise InputError("resampling the endmembers needs the scene's wavelengths; none were "
                             "found in its metadata")
        try:
            return resample_spectra(E, cube)
        except ValueError as exc:
            raise InputError(f"cannot resample {spec} onto the scene: {exc}") from exc
    if E.sizes["band"] != cube.sizes["band"]:
        raise BandMismatchError(
            f"the endmembers have {E.sizes['band']} bands but the cube has {cube.sizes['band']}; "
            + ("resample them onto the cube's wavelengths (resample_spectra)"
               if "wavelength" in cube.coords and "wavelength" in E.coords
               else "give spectra with the cube's bands"))
    wl = cube.coords["wavelength"].values if "wavelength" in cube.coords else None
    check_wavelengths(wl, E)
    return E


def load_model_for(method: Method, path: PathLike) -> Any:
    """Load a model file and check that it is the kind ``method`` runs."""
    from .models.base import load_model

    net = load_model(path)
    if method.model_class is not None and type(net).__name__ != method.model_class:
        other = next((m.name for m in METHODS.values() if m.model_class == type(net).__name__), None)
        raise InputTypeError(f"{path} holds a {type(net).__name__} model, which method "
                             f"{method.name!r} cannot run" + (f"; use method {other!r}" if other
                                                              else ""))
    return net


# -- the scene -------------------------------------------------------------------------------------

def unmix_scene(
    scene: PathLike,
    *,
    method: str,
    endmembers: str | None = None,
    model: PathLike | None = None,
    lam: float = 0.0,
    device: str = "cpu",
    chunk: int | str = "auto",
    resample: bool = False,
    seed: int | None = None,
    batch_size: int | None = None,
    return_endmembers: bool = False,
    local: bool = True,
) -> Any:
    """Open ``scene`` lazily and return its (lazy) abundance map for ``method``.

    Parameters are checked first (:func:`check_request`). A cube stored as integers without a scale
    next to reflectance endmembers is refused (:class:`InputError`; the API only warns). With
    ``return_endmembers=True`` returns ``(abundances, endmembers)``: the endmembers used (read,
    extracted or the model's), for the reconstruction-error layer.
    """
    m = check_request(method, endmembers=endmembers, model=model, lam=lam, batch_size=batch_size,
                      device=device, local=local)
    cube = open_scene(scene, chunk)
    fn = getattr(api, m.func)
    if m.needs == "model":
        assert model is not None
        net = load_model_for(m, model)
        check_units(cube, net.endmembers.values, strict=True)
        kw = {"batch_size": int(batch_size)} if batch_size is not None else {}
        ab, E = fn(cube, net, device=device, **kw), net.endmembers
    else:
        assert endmembers is not None
        E = load_endmembers(endmembers, cube, resample=resample, seed=seed)
        check_units(cube, E.values, strict=True)
        ab = fn(cube, E, device=device, **({"lam": float(lam)} if m.takes_lam else {}))
    return (ab, E) if return_endmembers else ab


# -- outputs ---------------------------------------------------------------------------------------

def output_format(path: PathLike) -> str:
    """``"tif"`` or ``"zarr"`` from an output path's suffix; :class:`ParameterError` otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "tif"
    if suffix == ".zarr":
        return "zarr"
    raise ParameterError(f"output {path}: use a .tif (Cloud-Optimized GeoTIFF) or .zarr "
                         "path").about("out")


def write_output(result: xr.DataArray, out: PathLike, *, quality: xr.DataArray | None = None,
                 endmembers: Any = None, overwrite: bool = False, progress: bool = False) -> list[Path]:
    """Write ``result`` to ``out`` as COG or Zarr by its suffix, with :func:`xr_unmix.io.write`.

    With ``quality`` (the cube) and ``endmembers`` the per-pixel reconstruction RMSE is written beside
    it (:func:`quality_path`), made from the written abundances: the estimator runs once. Returns the
    written paths (the map, then its quality layer).
    """
    kind = "cog" if output_format(out) == "tif" else "zarr"
    return write(result, **{kind: out}, quality=quality, endmembers=endmembers,
                 overwrite=overwrite, progress=progress)


def quality_path(out: PathLike) -> Path:
    """Where the reconstruction-RMSE layer of ``out`` goes: ``<stem>_rmse<suffix>``."""
    p = Path(out)
    return p.with_name(p.stem + "_rmse" + p.suffix)


# -- training data from a labelled scene -----------------------------------------------------------

#: side (px) of the tiles a spatial model (deq) is trained on from a labelled scene
TRAIN_TILE = 64


def _starts(n: int, t: int) -> list[int]:
    """Tile origins covering ``n`` px with tiles of ``t`` (the last one flush with the edge)."""
    out = list(range(0, n - t + 1, t))
    return out if out[-1] + t == n else [*out, n - t]


def labelled_training_data(cube: xr.DataArray, labels: PathLike, E: xr.DataArray, *,
                           tiles: bool) -> tuple[np.ndarray, np.ndarray]:
    """Training arrays from a scene and an aligned abundance raster.

    Pixel form ``(n, bands)``, ``(n, R)`` with only the pixels finite in both; or (``tiles``) the
    whole scene as tiles ``(n, bands, h, w)`` with labels ``(n, R, h, w)`` NaN where unlabelled (a
    spatial model sees every pixel as context), cut into :data:`TRAIN_TILE` tiles. The raster's bands
    are matched to the endmembers by name when its band descriptions are endmember names, else taken
    in order.
    """
    truth = open_abundance(labels)
    if truth.sizes["y"] != cube.sizes["y"] or truth.sizes["x"] != cube.sizes["x"]:
        raise InputError(f"the labels are {truth.sizes['y']}x{truth.sizes['x']} px but the scene is "
                         f"{cube.sizes['y']}x{cube.sizes['x']}")
    names = [str(n) for n in E.endmember.values]
    have = [str(n) for n in truth.endmember.values]
    if set(names) <= set(have):
        truth = truth.sel(endmember=names)
    elif len(have) != len(names):
        raise InputError(f"the labels have {len(have)} bands ({', '.join(have)}) but there are "
                         f"{len(names)} endmembers ({', '.join(names)})")
    Y = cube.transpose("band", "y", "x").values.astype(np.float32)
    A = truth.transpose("endmember", "y", "x").values.astype(np.float32)
    none = "the labels: no pixel is labelled (all NaN/nodata where the scene is valid)"
    if tiles:
        valid = np.isfinite(Y).all(0)
        A = np.where(valid[None] & np.isfinite(A).all(0, keepdims=True), A, np.nan)
        if not np.isfinite(A).all(0).any():
            raise InputError(none)
        # nodata pixels become the mean spectrum: context for the spatial operator, never a label
        Y = np.where(valid[None], Y, np.nanmean(Y[:, valid], axis=1)[:, None, None])
        th, tw = min(TRAIN_TILE, Y.shape[1]), min(TRAIN_TILE, Y.shape[2])
        starts = [(i, j) for i in _starts(Y.shape[1], th) for j in _starts(Y.shape[2], tw)]
        Yt = np.stack([Y[:, i:i + th, j:j + tw] for i, j in starts])
        At = np.stack([A[:, i:i + th, j:j + tw] for i, j in starts])
        keep = np.isfinite(At).all(1).any((1, 2))
        return Yt[keep], At[keep]
    Yp, Ap = Y.reshape(Y.shape[0], -1).T, A.reshape(A.shape[0], -1).T
    ok = np.isfinite(Yp).all(1) & np.isfinite(Ap).all(1)
    if not ok.any():
        raise InputError(none)
    return Yp[ok], Ap[ok]


def check_output(out: PathLike, *, overwrite: bool) -> None:
    """Refuse, before any work, an output path that the writer would refuse at the end."""
    p = Path(out)
    kind: Literal["cog", "zarr"] = "cog" if output_format(p) == "tif" else "zarr"
    if os.path.lexists(p):
        if not overwrite:
            raise OutputExistsError(p)
        _atomic.check_replaceable(p, kind)
