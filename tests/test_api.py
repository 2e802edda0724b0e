"""The accessor contract (API.md): dims, coords, CRS, NaN handling, dask laziness, bad input."""

import numpy as np
import pytest
import xarray as xr

import xr_unmix
from xr_unmix.errors import BandMismatchError, DimensionError
from xr_unmix.testing import assert_tiled_equals_full, make_cube


def test_result_contract(scene):
    cube, E, truth = scene
    ab = cube.unmix.sunsal(E)
    assert ab.dims == ("endmember", "y", "x")
    assert list(ab.endmember.values) == list(E.endmember.values)
    np.testing.assert_array_equal(ab.y.values, cube.y.values)
    np.testing.assert_array_equal(ab.x.values, cube.x.values)
    assert ab.rio.crs == cube.rio.crs
    assert ab.rio.transform() == cube.rio.transform()
    assert ab.attrs["method"] == "sunsal" and ab.attrs["lam"] == 0.0
    assert ab.dtype == np.float32
    tight = cube.unmix.sunsal(E, tol=1e-7, max_iter=5000)
    np.testing.assert_allclose(tight.values, truth.values, atol=1e-3)


def test_any_dim_order_and_plain_array_endmembers(scene):
    cube, E, _ = scene
    ref = cube.unmix.fcls(E)
    other = cube.transpose("y", "x", "band").unmix.fcls(E.values)
    assert list(other.endmember.values) == ["em0", "em1", "em2"]
    np.testing.assert_allclose(other.values, ref.values, atol=1e-6)


def test_constraints_hold(scene):
    cube, E, _ = scene
    noisy = cube + np.random.default_rng(0).normal(0, 0.02, cube.shape).astype(np.float32)
    ab = noisy.unmix.fcls(E).values
    assert (ab >= 0).all()
    np.testing.assert_allclose(ab.sum(0), 1.0, atol=1e-5)
    assert (noisy.unmix.nnls(E).values >= 0).all()


def test_dask_lazy_and_equal_to_numpy(scene):
    cube, E, _ = scene
    lazy = cube.chunk({"y": 10, "x": 12}).unmix.sunsal(E)
    assert lazy.chunks is not None
    assert lazy.chunks[1:] == ((10, 10, 4), (12, 12, 8))
    assert_tiled_equals_full(cube, lambda c: c.unmix.sunsal(E), tol=1e-6)


def test_nan_and_nodata_pixels_only_poison_themselves(scene):
    cube, E, _ = scene
    c = cube.copy()
    c[5, 3, 4] = np.nan  # one band of one pixel
    ab = c.unmix.fcls(E)
    assert np.isnan(ab[:, 3, 4]).all()
    assert np.isfinite(ab.values).sum() == ab.size - 3
    # integer cube with a nodata value
    ints = (cube * 10000).round().astype("uint16")
    ints[:, 0, 0] = 65535
    ints = ints.rio.write_nodata(65535)
    ab_i = ints.unmix.fcls(E * 10000)
    assert np.isnan(ab_i[:, 0, 0]).all()
    ref = cube.unmix.fcls(E).values
    same = np.ones((24, 32), bool)
    same[0, 0] = False
    np.testing.assert_allclose(ab_i.values[:, same], ref[:, same], atol=2e-2)


def test_all_nan_tile_gives_nan_tile_without_error(scene):
    cube, E, _ = scene
    c = cube.copy()
    c[:, :10, :12] = np.nan
    ab = c.chunk({"y": 10, "x": 12}).unmix.fcls(E).compute()
    assert np.isnan(ab[:, :10, :12]).all()
    assert np.isfinite(ab[:, 10:, :]).all()


def test_non_georeferenced_cube_unmixes(scene):
    cube, E, _ = scene
    bare = xr.DataArray(cube.values, dims=cube.dims)
    ab = bare.unmix.fcls(E)
    assert ab.rio.crs is None
    assert ab.shape == (3, 24, 32)


def test_band_mismatch_names_both_counts(scene):
    cube, E, _ = scene
    with pytest.raises(BandMismatchError, match=r"29 bands.*30") as exc:
        cube.unmix.sunsal(E.isel(band=slice(0, 29)))
    assert isinstance(exc.value, ValueError)


def test_wrong_dims_names_them():
    bad = xr.DataArray(np.zeros((3, 4, 5)), dims=("wl", "y", "x"))
    with pytest.raises(DimensionError, match=r"\('wl', 'y', 'x'\)"):
        bad.unmix.sunsal(np.ones((3, 2)))


def test_nan_endmembers_rejected(scene):
    cube, E, _ = scene
    E2 = E.copy()
    E2[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cube.unmix.sunsal(E2)


def test_input_attrs_do_not_leak(scene):
    cube, E, _ = scene
    c = cube.assign_attrs(long_name=tuple(f"b{i}" for i in range(30)), scale_factor=1e-4)
    with pytest.warns(UserWarning, match="scale_factor"):
        ab = c.unmix.fcls(E)
    # the result's own CF long_name/units, not the cube's band names or scale
    assert ab.attrs["long_name"] == "abundance" and ab.attrs["units"] == "1"
    assert "scale_factor" not in ab.attrs


def test_float64_on_request(scene):
    cube, E, _ = scene
    assert cube.unmix.sunsal(E, dtype="float64").dtype == np.float64


def test_float64_solve_of_float32_cube_equals_float64_cube(scene):
    # a float32 cube is passed to the solver uncast; the answer must equal the solve of the cast cube
    cube, E, _ = scene
    assert cube.dtype == np.float32
    a = cube.unmix.fcls(E, dtype="float64").values
    b = cube.astype("float64").unmix.fcls(E, dtype="float64").values
    np.testing.assert_allclose(a, b, atol=1e-12)
    assert_tiled_equals_full(cube, lambda c: c.unmix.fcls(E, dtype="float64"), tol=1e-12,
                             chunks={"y": 10, "x": 12})


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_pixel_is_nan_on_numpy_and_dask(scene, bad):
    cube, E, _ = scene
    c = cube.copy()
    c[7, 11, 13] = bad
    ab = c.unmix.sunsal(E, lam=1e-3).values
    assert np.isnan(ab[:, 11, 13]).all()
    assert np.isfinite(ab).sum() == ab.size - ab.shape[0]
    # tiled: the same map, NaN at the same pixel only
    assert_tiled_equals_full(c, lambda a: a.unmix.sunsal(E, lam=1e-3), chunks={"y": 10, "x": 12})


def test_top_level_names():
    # each lazy top-level name is the object of the module that defines it (not just "something")
    import importlib

    for name, module in (("sunsal", "api"), ("admm", "api"), ("deq", "api"), ("to_cog", "io"),
                         ("to_zarr", "io"), ("read_endmembers", "endmembers"),
                         ("resample_spectra", "endmembers"), ("load_model", "models.base"),
                         ("vca", "extraction")):
        assert getattr(xr_unmix, name) is getattr(importlib.import_module(f"xr_unmix.{module}"), name)
    assert xr_unmix.metrics is importlib.import_module("xr_unmix.metrics")


def test_make_cube_chunks():
    cube, _, _ = make_cube(chunks={"y": 8, "x": 8})
    assert cube.chunks == ((30,), (8, 8, 8), (8, 8, 8, 8))


def test_admm_batch_size_gives_the_same_map(scene):
    cube, E, _ = scene
    net = xr_unmix.UADMMNet.from_endmembers(E)
    whole = cube.unmix.admm(net)
    small = cube.chunk({"y": 16, "x": 16}).unmix.admm(net, batch_size=7).compute()
    np.testing.assert_allclose(small.values, whole.values, rtol=1e-5, atol=1e-6)
    assert small.attrs["batch_size"] == 7
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        cube.unmix.admm(net, batch_size=0)
    with pytest.raises(ValueError, match="pixel-wise"):
        xr_unmix.api.apply_model(cube, xr_unmix.DEQUnmix.from_endmembers(E), batch_size=8)


def test_deq_solver_stats_in_attrs(scene):
    """A numpy cube is computed at once: the call's fixed-point statistics land in attrs."""
    cube, E, _ = scene
    model = xr_unmix.DEQUnmix.from_endmembers(E, seed=0)
    ab = cube.unmix.deq(model)
    assert ab.attrs["solver_n_solves"] >= 1
    assert ab.attrs["solver_n_unconverged"] == 0
    assert 0 <= ab.attrs["solver_max_residual"] <= model.config["tol"]
    # a solve that cannot converge is counted and warns, and the map is still complete
    tight = xr_unmix.DEQUnmix.from_endmembers(E, seed=0, max_iter=1, tol=1e-12)
    with pytest.warns(xr_unmix.ConvergenceWarning):
        ab2 = cube.unmix.deq(tight)
    assert ab2.attrs["solver_n_unconverged"] >= 1 and ab2.attrs["solver_max_residual"] > 1e-12
    assert np.isfinite(ab2.values).all()


def test_deq_return_endmembers(scene):
    cube, E, _ = scene
    model = xr_unmix.DEQUnmix.from_endmembers(E, seed=0)
    ab, Em = cube.unmix.deq(model, return_endmembers=True)
    assert Em.dims == ("band", "endmember")
    assert list(Em.endmember.values) == list(ab.endmember.values)
    np.testing.assert_allclose(Em.wavelength.values, cube.wavelength.values)
    np.testing.assert_allclose(Em.values, E.values, rtol=1e-5)


def test_stored_integers_against_reflectance_endmembers_warn(scene):
    """uint16 x 10000 with 0-1 spectra would give abundances off by the scale: say so."""
    cube, E, _ = scene
    ints = (cube * 10000).round().astype("uint16")
    with pytest.warns(UserWarning, match="uint16"):
        ints.unmix.fcls(E)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ints.unmix.fcls(E * 10000)  # same units: no warning
        (ints * 1e-4).unmix.fcls(E)


@pytest.mark.parametrize("name", ["sunsal", "fcls", "nnls", "ls", "admm", "deq"])
@pytest.mark.parametrize("lazy", [False, True])
def test_missing_gpu_is_a_device_error_everywhere(scene, monkeypatch, name, lazy):
    """``device="cuda"`` where torch sees no GPU: DeviceError from every estimator, numpy or Dask,
    and from the checks the CLI and batch make first."""
    import torch

    from xr_unmix import pipeline
    from xr_unmix.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cube, E, _ = scene
    cube = cube.chunk({"y": 12}) if lazy else cube
    if name == "admm":
        args = (xr_unmix.UADMMNet.from_endmembers(E),)
    elif name == "deq":
        args = (xr_unmix.DEQUnmix.from_endmembers(E, seed=0),)
    else:
        args = (E,)
    with pytest.raises(DeviceError, match="torch sees no CUDA GPU"):
        getattr(cube.unmix, name)(*args, device="cuda").compute()
    with pytest.raises(DeviceError, match="torch sees no CUDA GPU") as exc:
        pipeline.check_device("cuda:0")
    assert exc.value.param == "device"


@pytest.mark.parametrize("scene", [{"ny": 12, "nx": 10, "n_bands": 20, "n_endmembers": 4,
                                    "snr_db": 40, "seed": 3}], indirect=True)
def test_scene_fixture_takes_a_shape(scene):
    cube, E, truth = scene
    assert cube.sizes == {"band": 20, "y": 12, "x": 10} and E.sizes["endmember"] == 4
    assert truth.sizes["endmember"] == 4
    np.testing.assert_allclose(cube.unmix.fcls(E).values, truth.values, atol=0.05)  # 40 dB noise
