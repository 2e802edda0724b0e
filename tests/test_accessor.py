"""The ``unmix`` accessor: each method carries its function's signature and docstring."""

from __future__ import annotations

import inspect
import pydoc

import numpy as np
import pytest
import xarray as xr

import xr_unmix
from xr_unmix.accessor import METHODS, UnmixAccessor
from xr_unmix.bundles import bundles
from xr_unmix.extraction import estimate_n_endmembers, extract_endmembers

KNOWN = {"sunsal": xr_unmix.sunsal, "fcls": xr_unmix.fcls, "nnls": xr_unmix.nnls,
         "ls": xr_unmix.ls, "admm": xr_unmix.admm, "deq": xr_unmix.deq,
         "apply_model": xr_unmix.apply_model, "endmembers": extract_endmembers,
         "n_endmembers": estimate_n_endmembers, "bundles": bundles}


def test_methods_listed():
    assert set(KNOWN) <= set(METHODS)
    assert all(callable(getattr(UnmixAccessor, m)) for m in METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_signature_and_doc_are_the_functions(name):
    cube = xr.DataArray(np.ones((3, 2, 2), "float32"), dims=("band", "y", "x"))
    bound = getattr(cube.unmix, name)
    fn = bound.function
    if name in KNOWN:
        assert fn is KNOWN[name]
    want = list(inspect.signature(fn).parameters.values())[1:]  # less the cube
    got = list(inspect.signature(bound).parameters.values())
    assert got == want and got
    assert [p.kind for p in got] != [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]
    assert bound.__doc__ == fn.__doc__ and len(fn.__doc__) > 100 and not fn.__doc__.startswith("See ")
    assert list(inspect.signature(getattr(UnmixAccessor, name)).parameters)[0] == "self"
    text = pydoc.render_doc(bound, renderer=pydoc.plaintext)
    assert fn.__doc__.strip().splitlines()[0] in text
    assert str(inspect.signature(bound)) in text and "(*args, **kwargs)" not in text


def test_endmembers_method_runs():
    from xr_unmix.testing import make_cube

    cube, _, _ = make_cube(16, 16)
    E = cube.unmix.endmembers(3, seed=0)
    np.testing.assert_array_equal(E.values, extract_endmembers(cube, 3, seed=0).values)
