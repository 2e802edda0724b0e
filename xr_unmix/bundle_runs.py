"""From files to bundle-unmixing products: the engine of ``xr-unmix run SCENE --library LIB``.

As :mod:`xr_unmix.pipeline` does for the endmember methods: every parameter and path is checked
(:func:`check_bundle_request`) before a file is opened or a tile read, with the package's own errors
(:mod:`xr_unmix.errors`), which the command line prints as one line with exit status 2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from .errors import InputError, MissingInputError, ParameterError, XrUnmixError

PathLike = str | os.PathLike[str]


def check_bundle_request(library: PathLike, out: PathLike, *, method: str = "fcls",
                         n_mc: int = 50, max_endmembers: int | Sequence[int] = 3,
                         normalization: str | None = None, mode: str = "sma",
                         overwrite: bool = False, conflicts: dict[str, Any] | None = None,
                         mesma_penalty: float = 0.0) -> None:
    """Refuse a bundle run that cannot work, before any work.

    ``conflicts``: options of the endmember methods that were given (``endmembers``, ``model``,
    ``lam``, ``quality``, ...) -- each is an error with ``--library``.
    """
    from .bundles import check_params
    from .io.bundles import bundle_paths
    from .pipeline import check_output

    given = [k for k, v in (conflicts or {}).items() if v not in (None, False, 0, 0.0)]
    if given:
        raise ParameterError(f"{given[0]} does not apply to bundle unmixing with a library; give "
                             "either a library or endmembers/a model").about(given[0])
    if not Path(library).is_file():
        raise MissingInputError(f"no library file at {library} (a row-wise CSV with a Class column, "
                                "or an ENVI .sli)").about("library")
    _, sizes, _ = check_params(n_mc, max_endmembers, normalization, method, mode, mesma_penalty)
    if len(sizes) > 1 and mode != "mesma":
        raise ParameterError("max_endmembers: several set sizes (2,3) need MESMA (--mesma): each "
                             "pixel keeps the draw with the lowest residual").about("max_endmembers")
    if mesma_penalty and len(sizes) == 1:
        raise ParameterError("mesma_penalty applies to MESMA with several set sizes "
                             "(--max-endmembers 2,3)").about("mesma_penalty")
    names = ["fraction", "uncertainty"] + (["rmse"] if mode == "mesma" else []) + (
        ["n_endmembers"] if mode == "mesma" and len(sizes) > 1 else [])
    for p in bundle_paths(out, names).values():
        check_output(p, overwrite=overwrite)


def parse_set_sizes(text: str | int) -> int | tuple[int, ...]:
    """``"3"`` -> ``3``, ``"2,3"`` -> ``(2, 3)`` (the CLI's ``--max-endmembers``); anything else is a
    :class:`ParameterError`."""
    try:
        sizes = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise ParameterError(f"max_endmembers must be an integer or a comma list such as 2,3, got "
                             f"{text!r}").about("max_endmembers") from None
    return sizes[0] if len(sizes) == 1 else sizes


def read_library(path: PathLike) -> xr.DataArray:
    """:func:`xr_unmix.read_endmembers`, with an unreadable file as :class:`InputError`."""
    from .endmembers import read_endmembers

    try:
        return read_endmembers(path)
    except XrUnmixError:
        raise
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the library {path}: {exc}") from exc


def unmix_bundles_scene(scene: PathLike, library: PathLike, *, chunk: int | str = "auto",
                        n_mc: int = 50, max_endmembers: int | Sequence[int] = 3,
                        normalization: str | None = None, method: str = "fcls", mode: str = "sma",
                        seed: int | None = 0, mesma_penalty: float = 0.0) -> xr.Dataset:
    """Open ``scene`` lazily and return its (lazy) :func:`xr_unmix.bundles.bundles` Dataset.

    A cube stored as integers without a scale next to a reflectance library is refused
    (:class:`InputError`; the API only warns).
    """
    from ._cube import check_units
    from .bundles import bundles
    from .pipeline import open_scene

    lib = read_library(library)
    cube = open_scene(scene, chunk)
    check_units(cube, lib.values, strict=True)
    return bundles(cube, lib, n_mc=n_mc, max_endmembers=max_endmembers,
                   normalization=normalization, method=method, seed=seed, mode=mode,
                   mesma_penalty=mesma_penalty)


def write_bundle_output(result: xr.Dataset, out: PathLike, *, overwrite: bool = False,
                        progress: bool = False) -> list[Path]:
    """Write the Dataset with :func:`xr_unmix.io.bundles.write_bundles` (COG or Zarr by suffix)."""
    from .io.bundles import write_bundles

    return write_bundles(result, out, overwrite=overwrite, progress=progress)
