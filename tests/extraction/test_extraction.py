"""VCA and HySime: recovery on synthetic scenes, dask == numpy, provenance, bad input."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

import xr_unmix  # noqa: F401  (accessor)
from xr_unmix.extraction import estimate_n_endmembers, extract_endmembers, hysime, vca
from xr_unmix.metrics import match, sad


def _spectra(L: int, R: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth positive spectra: sums of Gaussian bumps, (L, R)."""
    wl = np.linspace(0, 1, L)
    E = np.full((L, R), 0.05)
    for r in range(R):
        for _ in range(4):
            E[:, r] += rng.uniform(0.2, 1) * np.exp(
                -((wl - rng.uniform(0, 1)) ** 2) / (2 * rng.uniform(0.03, 0.2) ** 2))
    return E


def _scene(R: int = 4, L: int = 100, H: int = 40, W: int = 50, snr_db: float = 30.0,
           seed: int = 0) -> tuple[xr.DataArray, np.ndarray]:
    """A (band, y, x) cube of Dirichlet mixtures with every endmember present as a pure pixel."""
    rng = np.random.default_rng(seed)
    E = _spectra(L, R, rng)
    A = rng.dirichlet(np.full(R, 0.5), size=H * W).T
    pure = rng.choice(H * W, size=R, replace=False)
    A[:, pure] = np.eye(R)
    Y = E @ A
    Y = Y + rng.normal(0.0, np.sqrt((Y**2).mean() / 10 ** (snr_db / 10)), Y.shape)
    cube = xr.DataArray(
        Y.reshape(L, H, W).astype(np.float32), dims=("band", "y", "x"),
        coords={"band": np.arange(L), "wavelength": ("band", np.linspace(400, 2400, L)),
                "y": 5000.0 - 30.0 * np.arange(H), "x": 300000.0 + 30.0 * np.arange(W)},
    )
    return cube, E


@pytest.fixture(scope="module")
def vca_scene() -> tuple[xr.DataArray, np.ndarray]:
    return _scene()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vca_recovers_pure_pixels_at_30db(vca_scene, seed):
    cube, E = vca_scene
    Eh = extract_endmembers(cube, 4, seed=seed)
    m = match(Eh, E)
    assert (m.sad < 0.02).all(), m.sad
    assert Eh.attrs["projection"] == "projective"
    assert abs(Eh.attrs["snr_db"] - 30.0) < 1.0  # the paper's SNR estimator on a 30 dB scene


def test_vca_on_a_plain_matrix(vca_scene):
    cube, E = vca_scene
    Y = cube.values.reshape(cube.sizes["band"], -1)
    Eh, idx = vca(Y, 4, seed=0)
    assert Eh.shape == (Y.shape[0], 4) and idx.shape == (4,) and idx.dtype.kind == "i"
    assert len(set(idx.tolist())) == 4
    # the endmembers are the chosen pixels, denoised: close to the raw pixels, closer to the truth
    raw = sad(Eh, Y[:, idx])
    assert (raw < 0.06).all()
    assert match(Eh, E).mean_sad < match(Y[:, idx].astype(float), E).mean_sad
    Eh2, idx2 = vca(Y, 4, seed=0)
    np.testing.assert_array_equal(idx, idx2)
    np.testing.assert_array_equal(Eh, Eh2)


def test_low_snr_uses_pca_branch():
    cube, E = _scene(snr_db=8.0, seed=3)
    Eh = extract_endmembers(cube, 4, seed=0)
    assert Eh.attrs["projection"] == "pca" and Eh.attrs["snr_db"] < 15 + 10 * np.log10(4)
    forced = extract_endmembers(cube, 4, seed=0, snr=40.0)
    assert forced.attrs["projection"] == "projective" and forced.attrs["snr_estimated"] == 0
    lazy = extract_endmembers(cube.chunk({"y": 10, "x": 25}), 4, seed=0)
    np.testing.assert_array_equal(lazy.pixel_row.values, Eh.pixel_row.values)
    np.testing.assert_allclose(lazy.values, Eh.values, rtol=1e-9, atol=1e-12)


def test_provenance_coordinates(vca_scene):
    cube, _ = vca_scene
    Eh = extract_endmembers(cube, 4, seed=0)
    assert Eh.dims == ("band", "endmember")
    assert list(Eh.endmember.values) == ["vca0", "vca1", "vca2", "vca3"]
    np.testing.assert_array_equal(Eh.wavelength.values, cube.wavelength.values)
    r, c = Eh.pixel_row.values, Eh.pixel_col.values
    np.testing.assert_array_equal(Eh.pixel_y.values, cube.y.values[r])
    np.testing.assert_array_equal(Eh.pixel_x.values, cube.x.values[c])
    pix = cube.values[:, r, c]
    assert (sad(Eh.values, pix) < 0.06).all()  # each endmember is (the denoised) pixel it names


def test_dask_ten_chunks_equals_numpy(vca_scene):
    cube, _ = vca_scene
    lazy = cube.chunk({"y": 20, "x": 10})  # 2 x 5 = 10 chunks
    assert lazy.data.npartitions == 10
    a = extract_endmembers(cube, 4, seed=7)
    b = extract_endmembers(lazy, 4, seed=7)
    np.testing.assert_array_equal(a.pixel_row.values, b.pixel_row.values)
    np.testing.assert_array_equal(a.pixel_col.values, b.pixel_col.values)
    np.testing.assert_allclose(a.values, b.values, rtol=1e-9, atol=1e-12)


def test_sample_mode_same_pixels_numpy_and_dask(vca_scene):
    cube, _ = vca_scene
    a = extract_endmembers(cube, 4, seed=5, sample=600)
    b = extract_endmembers(cube.chunk({"y": 7, "x": 13}), 4, seed=5, sample=600)
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.pixel_row.values, b.pixel_row.values)
    assert a.attrs["n_pixels_searched"] == 600
    c = extract_endmembers(cube, 4, seed=6, sample=600)
    assert not np.array_equal(a.pixel_row.values * 1000 + a.pixel_col.values,
                              c.pixel_row.values * 1000 + c.pixel_col.values)


def test_dask_is_not_computed_whole():
    """Each block is computed by its own task: a cube whose single-chunk compute raises still works."""
    cube, _ = _scene(H=20, W=30)

    def guard(block):
        if block.shape[1] > 10 or block.shape[2] > 10:  # a merged (whole-cube) block
            raise AssertionError("a block larger than a chunk was materialised")
        return block

    arr = da.from_array(cube.values, chunks=(-1, 10, 10)).map_blocks(guard, dtype=np.float32)
    lazy = cube.copy(data=arr)
    a = extract_endmembers(lazy, 4, seed=1)
    b = extract_endmembers(cube, 4, seed=1)
    np.testing.assert_array_equal(a.pixel_row.values, b.pixel_row.values)
    n = estimate_n_endmembers(lazy)
    assert isinstance(n, int) and n == estimate_n_endmembers(cube)  # dask == numpy, block by block


@pytest.mark.parametrize("chunked", [False, True])
def test_invalid_pixels_never_chosen(vca_scene, chunked):
    cube, _ = vca_scene
    bad = cube.copy(data=cube.values.copy())
    # an extreme pixel VCA would pick first, made invalid by one NaN band
    bad.values[:, 3, 4] = 50.0
    bad.values[17, 3, 4] = np.nan
    bad.values[:, 10:12, :] = np.nan
    c = bad.chunk({"y": 9}) if chunked else bad
    Eh = extract_endmembers(c, 4, seed=0)
    rows, cols = Eh.pixel_row.values, Eh.pixel_col.values
    assert np.isfinite(bad.values[:, rows, cols]).all()
    assert not ((rows == 3) & (cols == 4)).any()
    assert np.isfinite(Eh.values).all()


def test_nodata_value_is_invalid(vca_scene):
    cube, _ = vca_scene
    ints = (cube * 10000).round().astype(np.int16)
    ints.values[:, 0, 0] = 32000  # extreme: would be picked
    ints.values[5, 0, 0] = -9999
    ints = ints.rio.write_nodata(-9999)
    Eh = extract_endmembers(ints, 4, seed=0)
    assert not ((Eh.pixel_row.values == 0) & (Eh.pixel_col.values == 0)).any()


def test_hysime_counts_endmembers():
    for R in (3, 5):
        cube, _ = _scene(R=R, snr_db=30.0, seed=R)
        assert estimate_n_endmembers(cube) == R
        assert estimate_n_endmembers(cube.chunk({"y": 10})) == R
    k, Ek = hysime(cube.values.reshape(cube.sizes["band"], -1))
    assert k == 5 and Ek.shape == (cube.sizes["band"], 5)
    np.testing.assert_allclose(Ek.T @ Ek, np.eye(5), atol=1e-8)


def test_accessor_forwards(vca_scene):
    cube, _ = vca_scene
    Eh = cube.unmix.endmembers(4, seed=0)
    np.testing.assert_array_equal(Eh.values, extract_endmembers(cube, 4, seed=0).values)
    assert cube.unmix.n_endmembers() == 4


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, -3])
def test_n_below_two(vca_scene, n):
    cube, _ = vca_scene
    with pytest.raises(ValueError, match="at least 2"):
        extract_endmembers(cube, n)
    with pytest.raises(ValueError, match="at least 2"):
        vca(cube.values.reshape(cube.sizes["band"], -1), n)


def test_n_above_band_count():
    cube, _ = _scene(L=6, H=10, W=10)
    with pytest.raises(ValueError, match="more than the cube's 6 bands"):
        extract_endmembers(cube, 7)
    with pytest.raises(ValueError, match="6 bands"):
        vca(cube.values.reshape(6, -1), 7)


def test_n_must_be_int(vca_scene):
    with pytest.raises(TypeError):
        extract_endmembers(vca_scene[0], 3.5)


@pytest.mark.parametrize("chunked", [False, True])
def test_all_nan_cube(chunked):
    cube = xr.DataArray(np.full((10, 6, 7), np.nan, np.float32), dims=("band", "y", "x"))
    c = cube.chunk({"y": 3}) if chunked else cube
    with pytest.raises(ValueError, match="no valid pixel"):
        extract_endmembers(c, 3)
    with pytest.raises(ValueError, match="no valid pixel"):
        extract_endmembers(c, 3, sample=10)
    with pytest.raises(ValueError, match="no valid pixel"):
        estimate_n_endmembers(c)


def test_fewer_valid_pixels_than_n():
    v = np.full((10, 4, 4), np.nan, np.float32)
    v[:, 0, :2] = 1.0
    with pytest.raises(ValueError, match="only 2 valid pixels"):
        extract_endmembers(xr.DataArray(v, dims=("band", "y", "x")), 3)


def test_unknown_methods(vca_scene):
    with pytest.raises(ValueError, match="vca"):
        extract_endmembers(vca_scene[0], 3, method="nfindr")
    with pytest.raises(ValueError, match="hysime"):
        estimate_n_endmembers(vca_scene[0], method="vd")


@pytest.mark.parametrize("snr_db", [30.0, 8.0])
def test_streaming_search_equals_cached_search(monkeypatch, snr_db):
    """Above the coordinate-cache limit VCA makes one pass per endmember: same pixels either way."""
    import xr_unmix.extraction as ex

    cube, _ = _scene(snr_db=snr_db, seed=4, H=30, W=30)
    lazy = cube.chunk({"y": 10, "x": 15})
    cached = extract_endmembers(lazy, 4, seed=2)
    monkeypatch.setattr(ex._vca, "_CACHE_BYTES", 0)
    streamed = extract_endmembers(lazy, 4, seed=2)
    streamed_np = extract_endmembers(cube, 4, seed=2)
    for other in (streamed, streamed_np):
        np.testing.assert_array_equal(other.pixel_row.values, cached.pixel_row.values)
        np.testing.assert_array_equal(other.pixel_col.values, cached.pixel_col.values)
        np.testing.assert_allclose(other.values, cached.values, rtol=1e-9, atol=1e-12)


def test_vca_on_a_dask_matrix(vca_scene):
    cube, _ = vca_scene
    Y = cube.values.reshape(cube.sizes["band"], -1)
    E1, i1 = vca(Y, 4, seed=3)
    E2, i2 = vca(da.from_array(Y, chunks=(-1, 700)), 4, seed=3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(E1, E2, rtol=1e-9, atol=1e-12)


def test_endmembers_from_spec(vca_scene):
    from xr_unmix.extraction import endmembers_from_spec, is_extraction_spec

    cube, _ = vca_scene
    assert is_extraction_spec("vca:4") and is_extraction_spec("VCA") and not is_extraction_spec("e.csv")
    E = endmembers_from_spec(cube, "vca:3", seed=1)
    assert E.sizes["endmember"] == 3 and E.attrs["spec"] == "vca:3"
    assert endmembers_from_spec(cube, "vca:auto", seed=1).sizes["endmember"] == 4  # HySime
    with pytest.raises(ValueError, match="not an integer"):
        endmembers_from_spec(cube, "vca:four")
    with pytest.raises(ValueError, match="not understood"):
        endmembers_from_spec(cube, "nfindr:4")
    # the blind pipeline, accessor form
    A = cube.isel(y=slice(0, 8)).unmix.sunsal(E)
    assert A.sizes["endmember"] == 3 and list(A.endmember.values) == ["vca0", "vca1", "vca2"]
