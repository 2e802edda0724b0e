"""The ``unmix`` accessor on :class:`xarray.DataArray`: thin forwards to the free functions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import xarray as xr

from . import api
from ._dims import conform_cube


def _wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def method(self: UnmixAccessor, *args: Any, **kwargs: Any) -> Any:
        dims = kwargs.pop("dims", None)
        obj = self._obj if dims is None else conform_cube(self._obj, dims)
        return fn(obj, *args, **kwargs)

    return method


def _lazy(module: str, name: str) -> Callable[..., Any]:
    """Forward to ``xr_unmix.<module>.<name>`` imported on first call (keeps ``import xr_unmix`` light)."""

    def fn(obj: xr.DataArray, *args: Any, **kwargs: Any) -> Any:
        import importlib

        return getattr(importlib.import_module(f"xr_unmix.{module}"), name)(obj, *args, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"See :func:`xr_unmix.{module}.{name}`."
    return fn


@xr.register_dataarray_accessor("unmix")
class UnmixAccessor:
    """``cube.unmix``: unmixing of a ``(band, y, x)`` hyperspectral cube.

    Every method returns a new DataArray; the cube is never modified. Every method also takes
    ``dims=`` for a cube whose dims are named otherwise, e.g.
    ``cube.unmix.fcls(E, dims={"band": "wavelength", "y": "lat", "x": "lon"})`` (see
    :func:`xr_unmix.conform_cube`; the result has dims ``(endmember, y, x)``).
    """

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    sunsal = _wrap(api.sunsal)
    fcls = _wrap(api.fcls)
    nnls = _wrap(api.nnls)
    ls = _wrap(api.ls)
    admm = _wrap(api.admm)
    deq = _wrap(api.deq)
    apply_model = _wrap(api.apply_model)
    endmembers = _wrap(_lazy("extraction", "extract_endmembers"))
    n_endmembers = _wrap(_lazy("extraction", "estimate_n_endmembers"))
