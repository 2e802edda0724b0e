"""The ``unmix`` accessor on :class:`xarray.DataArray`: thin forwards to the free functions.

Each method carries the signature and the docstring of the function it forwards to (so that
``help(cube.unmix.sunsal)`` and ``inspect.signature`` show the real parameters, less the cube, which
is the DataArray the accessor hangs on). Functions outside :mod:`xr_unmix.api` (extraction) are
imported when the method is first looked up, so that ``import xr_unmix`` stays light.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import types
from collections.abc import Callable
from typing import Any

import xarray as xr

from . import api
from ._dims import conform_cube, restore_dims, spatial_names


def _method(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(cube, *args, **kw)`` as a method ``self.fn(*args, **kw)`` with ``fn``'s name, docstring and
    signature (the first parameter, the cube, becomes ``self``)."""

    @functools.wraps(fn)
    def method(self: UnmixAccessor, *args: Any, **kwargs: Any) -> Any:
        dims = kwargs.pop("dims", None)
        if dims is None:
            return fn(self._obj, *args, **kwargs)
        out = fn(conform_cube(self._obj, dims), *args, **kwargs)
        return restore_dims(out, spatial_names(self._obj, dims))

    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = sig.replace(parameters=[self_param, *params[1:]])  # type: ignore[attr-defined]
    del method.__wrapped__  # inspect must use __signature__ (self, ...), not fn's (cube, ...)
    method.function = fn  # type: ignore[attr-defined]  (the free function, for docs and tests)
    return method


class _Lazy:
    """A method forwarding to ``xr_unmix.<module>.<name>``, imported on first attribute lookup."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name
        self._fn: Callable[..., Any] | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def resolve(self) -> Callable[..., Any]:
        if self._fn is None:
            fn = getattr(importlib.import_module(f"xr_unmix.{self.module}"), self.name)
            self._fn = _method(fn)
            self._fn.__name__ = self.attr
            self._fn.__qualname__ = f"UnmixAccessor.{self.attr}"
        return self._fn

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        fn = self.resolve()
        return fn if obj is None else types.MethodType(fn, obj)


@xr.register_dataarray_accessor("unmix")
class UnmixAccessor:
    """``cube.unmix``: unmixing of a ``(band, y, x)`` hyperspectral cube.

    ``cube.unmix.f(...)`` is ``xr_unmix.f(cube, ...)``. Every method returns a new DataArray; the cube
    is never modified. Every method also takes ``dims=`` for a cube whose dims are named otherwise,
    e.g. ``cube.unmix.fcls(E, dims={"band": "wavelength", "y": "lat", "x": "lon"})``: the cube goes
    through :func:`xr_unmix.conform_cube` first, and the result's spatial dims are named back as the
    cube's (``(endmember, lat, lon)`` here), with their coordinates and the CRS.
    ``da.unmix.plot(...)`` works on any DataArray, a result too: ``da.plot(...)`` titled without the
    CRS coordinate (``spatial_ref = 0``).
    """

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    sunsal = _method(api.sunsal)
    fcls = _method(api.fcls)
    nnls = _method(api.nnls)
    ls = _method(api.ls)
    admm = _method(api.admm)
    deq = _method(api.deq)
    apply_model = _method(api.apply_model)
    endmembers = _Lazy("extraction", "extract_endmembers")
    n_endmembers = _Lazy("extraction", "estimate_n_endmembers")
    bundles = _Lazy("bundles", "bundles")
    plot = _Lazy("_plotting", "plot")


#: the accessor's methods, by name (docs/api.md lists each; tests/test_docs.py checks it)
METHODS = tuple(n for n, v in vars(UnmixAccessor).items()
                if not n.startswith("_") and (callable(v) or isinstance(v, _Lazy)))
