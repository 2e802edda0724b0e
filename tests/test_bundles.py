"""Bundle unmixing (xr_unmix.bundles): class libraries, Monte Carlo fractions and uncertainty, MESMA."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xr_unmix
from xr_unmix.bundles import class_even_draws
from xr_unmix.errors import InputError, ParameterError, WavelengthMismatchError
from xr_unmix.io.bundles import bundle_paths, write_bundles
from xr_unmix.testing import make_cube, make_endmembers

CLASSES = ("soil", "veg", "npv")


def bundle_scene(spread: float, *, members: int = 4, ny: int = 12, nx: int = 14, seed: int = 0,
                 n_bands: int = 40):
    """A cube whose pixels mix one random member of each class bundle, and the bundle library.

    Members of a class are its base spectrum times a smooth random shape ``1 + spread * g(wl)``:
    ``spread`` is the within-class variability. Returns (cube, library, class truth (class, y, x)).
    """
    rng = np.random.default_rng(seed)
    base = make_endmembers(n_bands, len(CLASSES), seed=7)
    wl = base.wavelength.values
    cols, cls = [], []
    for c in range(len(CLASSES)):
        for _ in range(members):
            a, b = rng.normal(size=2)
            shape = 1 + spread * (a * np.cos(np.pi * (wl - 400) / 2000) + b * np.sin(
                2 * np.pi * (wl - 400) / 2000)) / 2
            cols.append(base.values[:, c] * np.clip(shape, 0.2, None))
            cls.append(CLASSES[c])
    S = np.stack(cols, axis=1)
    lib = xr.DataArray(S, dims=("band", "endmember"),
                       coords={"band": base.band.values, "wavelength": ("band", wl),
                               "endmember": [f"s{i}" for i in range(S.shape[1])],
                               "class": ("endmember", np.array(cls, dtype=object))})
    A = rng.dirichlet(np.ones(len(CLASSES)), size=ny * nx).T  # (C, n)
    pick = np.stack([c * members + rng.integers(0, members, ny * nx) for c in range(len(CLASSES))])
    Y = np.einsum("bcn,cn->bn", S[:, pick], A)
    cube, _, _ = make_cube(ny, nx, endmembers=base)
    cube = cube.copy(data=Y.reshape(n_bands, ny, nx).astype(np.float32))
    truth = xr.DataArray(A.reshape(-1, ny, nx), dims=("class", "y", "x"),
                         coords={"class": list(CLASSES), "y": cube.y, "x": cube.x})
    return cube, lib, truth


def test_dataset_layout_sums_to_one_and_georeferenced():
    cube, lib, _ = bundle_scene(0.1)
    ds = cube.unmix.bundles(lib, n_mc=8)
    assert set(ds.data_vars) == {"fraction", "uncertainty"}
    for v in ("fraction", "uncertainty"):
        assert ds[v].dims == ("class", "y", "x")
        assert list(ds[v]["class"].values) == list(CLASSES)
    np.testing.assert_allclose(ds.fraction.sum("class").values, 1.0, atol=1e-5)
    assert (ds.uncertainty.values >= 0).all() and (ds.fraction.values >= -1e-6).all()
    assert ds.fraction.rio.crs == cube.rio.crs
    assert ds.fraction.rio.transform() == cube.rio.transform()
    assert ds.attrs["n_mc"] == 8 and ds.attrs["method"] == "bundles_sma"


def test_one_spectrum_per_class_single_draw_equals_fcls(scene):
    cube, E, _ = scene
    lib = E.assign_coords({"class": ("endmember", list(CLASSES))})
    ds = cube.unmix.bundles(lib, n_mc=1, max_endmembers=3)
    ab = cube.unmix.fcls(lib, dtype="float64", tol=1e-8)
    np.testing.assert_allclose(ds.fraction.values, ab.values, atol=1e-5)
    assert float(np.abs(ds.uncertainty).max()) == 0.0
    # the class coordinate of the plain estimator gives the same class fractions
    np.testing.assert_allclose(ab.groupby("class").sum().sel({"class": list(CLASSES)}).values,
                               ds.fraction.values, atol=1e-5)


@pytest.mark.parametrize("kind", ["admm", "deq"])
def test_network_results_keep_the_class_coordinate(scene, kind, monkeypatch):
    """admm/deq carry the class coordinate of the model's endmembers (as sunsal/fcls/... carry the
    library's), so that class fractions are one groupby away."""
    cube, E, _ = scene
    classes = np.array(["rock", "plant", "rock"], dtype=object)
    cls = xr_unmix.UADMMNet if kind == "admm" else xr_unmix.DEQUnmix
    model = cls.from_endmembers(E, seed=0) if kind == "deq" else cls.from_endmembers(E)
    plain = getattr(cube.unmix, kind)(model)  # no classes: none invented
    assert "class" not in plain.coords
    base = cls.endmembers  # the property; a model whose endmembers carry classes:
    monkeypatch.setattr(cls, "endmembers", property(
        lambda self: base.fget(self).assign_coords({"class": ("endmember", classes)})))
    ab = getattr(cube.unmix, kind)(model)
    assert list(ab["class"].values) == list(classes) and ab["class"].dims == ("endmember",)
    fr = ab.groupby("class").sum()
    assert sorted(fr["class"].values) == ["plant", "rock"] and fr.rio.crs == ab.rio.crs
    np.testing.assert_allclose(fr.sel({"class": "rock"}).values,
                               ab.isel(endmember=[0, 2]).sum("endmember").values, rtol=1e-6)
    xr.testing.assert_allclose(ab.drop_vars("class"), plain)
    if kind == "deq":
        _, Em = cube.unmix.deq(model, return_endmembers=True)
        assert list(Em["class"].values) == list(classes)


def test_rowwise_library_file_to_class_fractions(tmp_path):
    E = make_endmembers(40, 6, seed=5)
    lib = E.assign_coords({"class": ("endmember", [*CLASSES, *CLASSES])})
    cube, _, _ = make_cube(10, 12, endmembers=E)
    p = xr_unmix.endmembers.write_endmembers(lib, tmp_path / "lib.csv")
    back = xr_unmix.read_endmembers(p)
    assert list(back["class"].values) == list(lib["class"].values)
    frac = cube.unmix.fcls(back).groupby("class").sum()
    np.testing.assert_allclose(frac.sum("class").values, 1.0, atol=1e-5)
    ds = cube.unmix.bundles(back, n_mc=4)
    np.testing.assert_allclose(ds.fraction.sum("class").values, 1.0, atol=1e-5)


def test_deterministic_per_seed():
    cube, lib, _ = bundle_scene(0.15)
    a = cube.unmix.bundles(lib, n_mc=6, seed=3)
    b = cube.unmix.bundles(lib, n_mc=6, seed=3)
    c = cube.unmix.bundles(lib, n_mc=6, seed=4)
    xr.testing.assert_equal(a, b)
    assert not np.allclose(a.uncertainty.values, c.uncertainty.values)


def test_numpy_and_dask_equal_whatever_the_chunks():
    cube, lib, _ = bundle_scene(0.15, ny=16, nx=18)
    eager = cube.unmix.bundles(lib, n_mc=6, seed=1)
    for chunks in ({"y": 8, "x": 6}, {"y": 5, "x": 18}):
        lazy = cube.chunk(chunks).unmix.bundles(lib, n_mc=6, seed=1)
        assert lazy.fraction.chunks is not None  # lazy until computed
        got = lazy.compute()
        for v in ("fraction", "uncertainty"):
            np.testing.assert_allclose(got[v].values, eager[v].values, rtol=0, atol=1e-9)


def test_uncertainty_grows_with_within_class_spread():
    means = []
    for spread in (0.0, 0.1, 0.3):
        cube, lib, _ = bundle_scene(spread, seed=2)
        ds = cube.unmix.bundles(lib, n_mc=12, seed=0)
        means.append(float(ds.uncertainty.mean()))
    assert means[0] < 1e-5  # identical members: every draw gives the same answer
    assert means[0] < means[1] < means[2], means


def test_fractions_follow_the_truth_on_bundle_scenes():
    cube, lib, truth = bundle_scene(0.1, seed=4)
    ds = cube.unmix.bundles(lib, n_mc=20, seed=0)
    err = float(np.abs(ds.fraction - truth).mean())
    naive = float(np.abs(truth - 1 / 3).mean())
    assert err < 0.5 * naive, (err, naive)


def test_mesma_picks_the_combination_with_lowest_residual():
    cube, lib, truth = bundle_scene(0.3, members=2, seed=5)
    # 2 members in each of 3 classes: 8 combinations, all among 40 seeded draws
    draws = class_even_draws(np.repeat(np.arange(3), 2), 3, 40, 3, 0)
    assert len({tuple(sorted(d)) for d in draws}) == 8
    m = cube.unmix.bundles(lib, n_mc=40, mode="mesma", seed=0)
    s = cube.unmix.bundles(lib, n_mc=40, mode="sma", seed=0)
    assert set(m.data_vars) == {"fraction", "uncertainty", "rmse"}
    assert float(m.rmse.max()) < 1e-4  # the pixel's own members were among the candidates
    np.testing.assert_allclose(m.fraction.values, truth.values, atol=1e-3)
    assert float(np.abs(s.fraction - truth).mean()) > 10 * float(np.abs(m.fraction - truth).mean())
    np.testing.assert_allclose(m.fraction.sum("class").values, 1.0, atol=1e-5)


def test_mesma_variable_set_size_and_its_tie_rule():
    """max_endmembers=(2, 3): n_mc draws of each size (SpectralUnmixing's --num_endmembers list).
    Pixels made of two classes are fitted exactly by a 2-spectrum draw and by a 3-spectrum one (the
    third at 0, up to the solver's tolerance): with a penalty of 0.002 per extra spectrum the
    smaller set is chosen, its missing class at exactly 0; pixels of three classes, which no 2-set
    fits, keep three. Without a penalty the lowest RMSE decides."""
    cube, lib, truth = bundle_scene(0.0, members=1, ny=10, nx=12, seed=6)
    two = truth.isel(y=slice(0, 5)).copy(data=truth.isel(y=slice(0, 5)).values)
    two.values[2] = 0.0  # npv absent in the top half
    two.values /= two.values.sum(axis=0, keepdims=True)
    top = np.einsum("br,ryx->byx", lib.values, two.values)
    cube = cube.copy(data=np.concatenate([top, cube.values[:, 5:]], axis=1))
    sizes = xr_unmix.bundles.check_params(12, (3, 2, 2), None, "fcls", "mesma")[1]
    assert sizes == (2, 3)
    draws = xr_unmix.bundles.draw_sets(np.arange(3), 3, 12, sizes, 0)
    assert [len(d) for d in draws] == [2] * 12 + [3] * 12  # smallest sets first
    assert {0, 1} in [set(d) for d in draws[:12]]  # soil + veg among the 2-sets
    m = cube.unmix.bundles(lib, n_mc=12, max_endmembers=(2, 3), mode="mesma", mesma_penalty=0.002)
    n = m.n_endmembers.values
    mixed = truth.values[:, 5:].min(axis=0) > 0.15  # no 2-set comes within 0.002 of these
    assert mixed.sum() >= 10 and (n[:5] == 2).all() and (n[5:][mixed] == 3).all(), n
    assert (m.fraction.sel({"class": "npv"}).values[:5] == 0).all()
    np.testing.assert_allclose(m.fraction.values[:, :5], two.values, atol=1e-4)
    three = n[5:] == 3
    np.testing.assert_allclose(m.fraction.values[:, 5:][:, three], truth.values[:, 5:][:, three],
                               atol=1e-4)
    free = cube.unmix.bundles(lib, n_mc=12, max_endmembers=(2, 3), mode="mesma")
    assert free.rmse.values.max() < 1e-3  # the lowest RMSE: every pixel fitted
    assert m.attrs["max_endmembers"] == "2,3" and m.attrs["mesma_penalty"] == 0.002
    # one size: the draws and the result are those of max_endmembers=3 (no n_endmembers layer)
    one = cube.unmix.bundles(lib, n_mc=8, max_endmembers=(3,), mode="mesma")
    xr.testing.assert_equal(one, cube.unmix.bundles(lib, n_mc=8, max_endmembers=3, mode="mesma"))
    assert "n_endmembers" not in one
    for bad, match in (((), "empty"), ((2, 0), "max_endmembers must be"),):
        with pytest.raises(ParameterError, match=match):
            cube.unmix.bundles(lib, max_endmembers=bad)
    with pytest.raises(ParameterError, match="mesma_penalty"):
        cube.unmix.bundles(lib, max_endmembers=(2, 3), mode="mesma", mesma_penalty=-1)


def test_class_even_draws():
    cls = np.array([0, 0, 0, 1, 1, 2])
    d = class_even_draws(cls, 3, 30, 3, 0)
    assert d.shape == (30, 3)
    assert all(sorted(cls[row]) == [0, 1, 2] for row in d)  # one spectrum of every class
    d2 = class_even_draws(cls, 3, 30, 2, 0)
    assert all(len(set(cls[row])) == 2 for row in d2)  # two classes, random which
    assert len({tuple(sorted(set(cls[row]))) for row in d2}) == 3
    d5 = class_even_draws(cls, 3, 30, 5, 0)
    assert all(len(set(row)) == 5 and set(cls[row]) == {0, 1, 2} for row in d5)
    np.testing.assert_array_equal(class_even_draws(cls, 3, 30, 3, 9), class_even_draws(cls, 3, 30, 3, 9))


def test_nan_in_nan_out():
    cube, lib, _ = bundle_scene(0.1)
    ref = cube.unmix.bundles(lib, n_mc=5)
    bad = cube.copy(data=cube.values.copy())
    bad.values[4, 2, 3] = np.nan
    ds = bad.unmix.bundles(lib, n_mc=5)
    for v in ("fraction", "uncertainty"):
        assert np.isnan(ds[v].values[:, 2, 3]).all()
        mask = np.ones(ds[v].shape[1:], bool)
        mask[2, 3] = False
        np.testing.assert_allclose(ds[v].values[:, mask], ref[v].values[:, mask], atol=1e-9)


def test_brightness_normalisation_ignores_brightness():
    cube, lib, _ = bundle_scene(0.1)
    dark = cube.copy(data=cube.values * 0.4)
    a = cube.unmix.bundles(lib, n_mc=5, normalization="brightness")
    b = dark.unmix.bundles(lib, n_mc=5, normalization="brightness")
    np.testing.assert_allclose(a.fraction.values, b.fraction.values, atol=1e-5)
    plain = dark.unmix.bundles(lib, n_mc=5)
    assert not np.allclose(plain.fraction.values, a.fraction.values, atol=1e-3)
    assert a.attrs["normalization"] == "brightness"


def test_nnls_method_normalised_to_one():
    cube, lib, _ = bundle_scene(0.1)
    ds = cube.unmix.bundles(lib, n_mc=5, method="nnls")
    np.testing.assert_allclose(ds.fraction.sum("class").values, 1.0, atol=1e-5)


def test_library_resampled_onto_the_cube():
    cube, lib, _ = bundle_scene(0.1, n_bands=40)
    fine = xr_unmix.resample_spectra(lib, np.linspace(400, 2400, 300)).assign_coords(
        {"class": lib["class"]})
    a = cube.unmix.bundles(lib, n_mc=4)
    b = cube.unmix.bundles(fine, n_mc=4)
    np.testing.assert_allclose(a.fraction.values, b.fraction.values, atol=0.02)


@pytest.mark.parametrize("kw,match", [
    ({"max_endmembers": 0}, "max_endmembers must be an integer >= 1"),
    ({"n_mc": 0}, "n_mc must be an integer >= 1"),
    ({"n_mc": 2.5}, "n_mc must be an integer"),
    ({"normalization": "length"}, "normalization"),
    ({"method": "sunsal"}, "method must be one of"),
    ({"mode": "best"}, "mode must be one of"),
])
def test_parameter_errors(kw, match):
    cube, lib, _ = bundle_scene(0.1, ny=4, nx=4)
    with pytest.raises(ParameterError, match=match):
        cube.unmix.bundles(lib, **kw)


def test_library_errors():
    cube, lib, _ = bundle_scene(0.1, ny=4, nx=4)
    with pytest.raises(InputError, match="class 'water' has no spectra"):
        cube.unmix.bundles(lib, classes=["soil", "water"])
    with pytest.raises(InputError, match="no 'class' coordinate"):
        cube.unmix.bundles(lib.drop_vars("class"))
    short = lib.where(lib.wavelength < 1500, drop=True)
    with pytest.raises(WavelengthMismatchError, match="does not cover"):
        cube.unmix.bundles(short)
    gap = lib.copy(data=lib.values.copy())
    gap.values[20:24] = 0.0  # a library whose water bands are zeroed (as EMIT's are)
    with pytest.raises(WavelengthMismatchError, match="does not cover 4 of the cube's 40 bands"):
        cube.unmix.bundles(gap)
    fine = xr_unmix.resample_spectra(lib, np.linspace(400, 2400, 81)).assign_coords(
        {"class": lib["class"]})
    fine.values[38:46] = 0.0  # the same on a finer library: resampled, the gap still found
    with pytest.raises(WavelengthMismatchError, match="does not cover"):
        cube.unmix.bundles(fine)
    # the same library, the zeroed bands dropped from the cube: fine
    keep = (cube.wavelength < gap.wavelength[19] + 10) | (cube.wavelength > gap.wavelength[24] - 10)
    ok = cube.isel(band=np.flatnonzero(keep.values)).unmix.bundles(gap, n_mc=2)
    np.testing.assert_allclose(ok.fraction.sum("class").values, 1.0, atol=1e-5)
    with pytest.raises(xr_unmix.BandMismatchError):
        cube.unmix.bundles(lib.isel(band=slice(0, 30)).drop_vars("wavelength"))


def test_subset_of_classes():
    cube, lib, _ = bundle_scene(0.1)
    ds = cube.unmix.bundles(lib, n_mc=3, classes=["veg", "soil"])
    assert list(ds["class"].values) == ["veg", "soil"]
    np.testing.assert_allclose(ds.fraction.sum("class").values, 1.0, atol=1e-5)


def test_write_bundles_cog_and_zarr(tmp_path):
    import rasterio

    cube, lib, _ = bundle_scene(0.1)
    ds = cube.chunk({"y": 6, "x": 7}).unmix.bundles(lib, n_mc=4)
    paths = write_bundles(ds, tmp_path / "fractions.tif")
    assert paths == list(bundle_paths(tmp_path / "fractions.tif").values())
    assert paths[1].name == "fractions_uncertainty.tif"
    want = ds.compute()
    for p, v in zip(paths, ("fraction", "uncertainty"), strict=True):
        with rasterio.open(p) as src:
            assert src.descriptions == CLASSES
            assert src.tags(1)["class"] == "soil"
            assert src.tags()["n_mc"] == "4" and src.tags()["method"] == "bundles_sma"
            np.testing.assert_allclose(src.read(), want[v].values, atol=1e-6)
    zs = write_bundles(ds, tmp_path / "fractions.zarr")
    back = xr_unmix.open_abundance(zs[1])
    np.testing.assert_allclose(back.values, want.uncertainty.values, atol=1e-6)
    with pytest.raises(ParameterError, match=".tif"):
        write_bundles(ds, tmp_path / "fractions.nc")


def test_real_earthlib_bundles():
    pytest.importorskip("earthlib", reason="earthlib (the sample scenes' extra) is not installed")
    from xr_unmix.library import load_library

    lib = load_library("earthlib")
    keep = ["vegetation", "bare", "npv"]
    lib = lib.isel(endmember=np.flatnonzero(np.isin(lib["class"].values, keep)))
    # a cube on 60 bands outside earthlib's water-vapour gaps, mixing random library spectra
    wl = np.concatenate([np.linspace(420, 1340, 30), np.linspace(1470, 1780, 12),
                         np.linspace(1970, 2430, 18)])
    on = xr_unmix.resample_spectra(lib, wl).assign_coords({"class": lib["class"]})
    rng = np.random.default_rng(0)
    n = 10 * 12
    idx = {c: np.flatnonzero(on["class"].values == c) for c in keep}
    A = rng.dirichlet(np.ones(3), size=n).T
    Y = sum(on.values[:, rng.choice(idx[c], n)] * A[i] for i, c in enumerate(keep))
    cube, _, _ = make_cube(10, 12, endmembers=make_endmembers(wl.size))
    cube = cube.copy(data=Y.reshape(-1, 10, 12).astype(np.float32)).assign_coords(
        wavelength=("band", wl))
    ds = cube.unmix.bundles(lib, n_mc=10, classes=keep)
    np.testing.assert_allclose(ds.fraction.sum("class").values, 1.0, atol=1e-5)
    truth = A.reshape(3, 10, 12)
    f, u = ds.fraction.values, ds.uncertainty.values
    err = float(np.abs(f - truth).mean())
    # real bundles vary a lot within a class: the error is large, and the uncertainty says so
    # (measured: error 0.155, mean uncertainty 0.20, truth within 2 sigma at 92 % of the values)
    assert err < float(np.abs(truth - 1 / 3).mean())
    assert float(u.mean()) > 0.5 * err
    assert float((np.abs(f - truth) <= 2 * u).mean()) > 0.8
    assert np.corrcoef(f[0].ravel(), truth[0].ravel())[0, 1] > 0.6  # vegetation
    # MESMA, the best of 100 candidate sets per pixel, does better (measured 0.112)
    m = cube.unmix.bundles(lib, n_mc=100, classes=keep, mode="mesma")
    assert float(np.abs(m.fraction.values - truth).mean()) < err
    # a cube band inside earthlib's 1350-1460 nm gap is not covered
    with pytest.raises(WavelengthMismatchError, match="does not cover 1 of"):
        cube.assign_coords(wavelength=("band", np.r_[wl[:-1], 1400.0])).unmix.bundles(
            lib, classes=keep)


# -- command line ----------------------------------------------------------------------------------

@pytest.fixture
def cli_files(tmp_path):
    from xr_unmix.endmembers import write_endmembers
    from xr_unmix.testing import write_cube_tif

    cube, lib, _ = bundle_scene(0.1, ny=16, nx=20)
    scene = write_cube_tif(cube, tmp_path / "scene.tif")
    lib_csv = write_endmembers(lib, tmp_path / "lib.csv")
    return tmp_path, scene, lib_csv, cube, lib


def test_cli_run_library_writes_fraction_and_uncertainty(cli_files):
    import rasterio
    from click.testing import CliRunner

    from xr_unmix.cli import main

    tmp, scene, lib_csv, cube, lib = cli_files
    out = tmp / "fractions.tif"
    r = CliRunner().invoke(main, ["run", str(scene), "--library", str(lib_csv), "--n-mc", "6",
                                  "--out", str(out), "--chunk", "16"])
    assert r.exit_code == 0, r.output
    assert "fractions_uncertainty.tif" in r.output
    want = cube.unmix.bundles(lib, n_mc=6, seed=0)
    for p, v in ((out, "fraction"), (tmp / "fractions_uncertainty.tif", "uncertainty")):
        with rasterio.open(p) as src:
            assert src.descriptions == CLASSES and src.crs == cube.rio.crs
            np.testing.assert_allclose(src.read(), want[v].values, atol=1e-5)
    r = CliRunner().invoke(main, ["run", str(scene), "--library", str(lib_csv), "--n-mc", "4",
                                  "--mesma", "--normalization", "brightness",
                                  "--out", str(tmp / "m.zarr")])
    assert r.exit_code == 0, r.output
    assert (tmp / "m_rmse.zarr").exists() and (tmp / "m_uncertainty.zarr").exists()


@pytest.mark.parametrize("extra,match", [
    (["--n-mc", "0"], "--n-mc: n_mc must be an integer >= 1"),
    (["--max-endmembers", "0"], "--max-endmembers: max_endmembers must be"),
    (["--endmembers", "x.csv"], "--endmembers: endmembers does not apply"),
    (["--quality"], "--quality: quality does not apply"),
    (["--method", "sunsal"], "--method: method must be one of"),
    (["--max-endmembers", "2,x"], "--max-endmembers: max_endmembers must be an integer or a comma list"),
    (["--max-endmembers", "2,3"], "--max-endmembers: max_endmembers: several set sizes (2,3) need MESMA"),
    (["--mesma", "--mesma-penalty", "0.01"], "--mesma-penalty: mesma_penalty applies to MESMA with"),
    (["--mesma", "--max-endmembers", "2,3", "--mesma-penalty", "-1"],
     "--mesma-penalty: mesma_penalty must be a finite number >= 0"),
])
def test_cli_run_library_user_errors(cli_files, extra, match):
    from click.testing import CliRunner

    from xr_unmix.cli import main

    tmp, scene, lib_csv, _, _ = cli_files
    r = CliRunner().invoke(main, ["run", str(scene), "--library", str(lib_csv),
                                  "--out", str(tmp / "f.tif"), *extra])
    assert r.exit_code == 2, r.output
    assert match in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp / "f.tif").exists()


def test_cli_run_library_not_covering_the_scene(cli_files):
    from click.testing import CliRunner

    from xr_unmix.cli import main
    from xr_unmix.endmembers import write_endmembers

    tmp, scene, _, _, lib = cli_files
    short = write_endmembers(lib.where(lib.wavelength < 1500, drop=True), tmp / "short.csv")
    r = CliRunner().invoke(main, ["run", str(scene), "--library", str(short),
                                  "--out", str(tmp / "f.tif")])
    assert r.exit_code == 2 and "does not cover" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(main, ["run", str(scene), "--library", str(tmp / "none.csv"),
                                  "--out", str(tmp / "f.tif")])
    assert r.exit_code == 2 and "no library file" in r.output, r.output


def test_stac_item_names_eo_bands_by_class(tmp_path):
    pytest.importorskip("rio_stac", reason="rio-stac (the stac extra) is not installed")
    import json

    cube, lib, _ = bundle_scene(0.1)
    ds = cube.unmix.bundles(lib, n_mc=3)
    paths = write_bundles(ds, tmp_path / "fractions.tif")
    item = xr_unmix.stac_item(paths[0])
    d = json.loads((tmp_path / "fractions.json").read_text())
    assert d["id"] == "fractions" and d["assets"]["data"]["href"] == "fractions.tif"
    assert [b["name"] for b in d["assets"]["data"]["eo:bands"]] == list(CLASSES)
    assert d["properties"]["xr_unmix:method"] == "bundles_sma"
    proj = {k: v for k, v in d["properties"].items() if k.startswith("proj:")}
    assert proj.get("proj:epsg") == 32633 or proj.get("proj:code") == "EPSG:32633", proj
    assert item.id == "fractions"
    # a plain abundance COG: bands named by endmember
    ab = cube.unmix.fcls(lib.isel(endmember=[0, 4, 8]))
    p = xr_unmix.to_cog(ab, tmp_path / "ab.tif")
    names = [b["name"] for b in xr_unmix.stac_item(p, write=False).assets["data"].extra_fields[
        "eo:bands"]]
    assert names == list(ab.endmember.values)
    from xr_unmix.errors import MissingInputError

    with pytest.raises(MissingInputError):
        xr_unmix.stac_item(tmp_path / "none.tif")


def test_cli_run_library_mesma_several_set_sizes(cli_files):
    """--mesma --max-endmembers 2,3: the same maps as the API call, plus OUT_n_endmembers (2 or 3)."""
    import rasterio
    from click.testing import CliRunner

    from xr_unmix.cli import main

    tmp, scene, lib_csv, cube, lib = cli_files
    out = tmp / "mm.tif"
    r = CliRunner().invoke(main, ["run", str(scene), "--library", str(lib_csv), "--n-mc", "4",
                                  "--mesma", "--max-endmembers", "2,3", "--mesma-penalty", "0.001",
                                  "--out", str(out), "--chunk", "16"])
    assert r.exit_code == 0, r.output
    assert "mm_n_endmembers.tif" in r.output
    want = cube.unmix.bundles(lib, n_mc=4, seed=0, mode="mesma", max_endmembers=(2, 3),
                              mesma_penalty=0.001)
    for p, v in ((out, "fraction"), (tmp / "mm_rmse.tif", "rmse"),
                 (tmp / "mm_n_endmembers.tif", "n_endmembers")):
        with rasterio.open(p) as src:
            got = src.read()
        np.testing.assert_allclose(got.reshape(want[v].shape), want[v].values, atol=1e-5)
    with rasterio.open(tmp / "mm_n_endmembers.tif") as src:
        assert set(np.unique(src.read())) <= {2.0, 3.0}
