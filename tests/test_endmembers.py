import numpy as np
import pytest
import xarray as xr

from xr_unmix import read_endmembers, resample_spectra
from xr_unmix.endmembers import write_endmembers
from xr_unmix.testing import make_endmembers


def test_csv_round_trip(tmp_path):
    E = make_endmembers(25, 4)
    p = write_endmembers(E, tmp_path / "em.csv")
    back = read_endmembers(p)
    assert back.dims == ("band", "endmember")
    assert list(back.endmember.values) == list(E.endmember.values)
    np.testing.assert_allclose(back.values, E.values)
    np.testing.assert_allclose(back.wavelength.values, E.wavelength.values)


def test_csv_micrometres_converted(tmp_path):
    p = tmp_path / "um.csv"
    p.write_text("wavelength_um,a,b\n0.5,0.1,0.2\n1.0,0.3,0.4\n2.0,0.5,0.6\n")
    E = read_endmembers(p)
    np.testing.assert_allclose(E.wavelength.values, [500, 1000, 2000])


def test_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("wavelength,a\n500,x\n600,0.2\n")
    with pytest.raises(ValueError, match="non-numeric"):
        read_endmembers(p)
    with pytest.raises(FileNotFoundError):
        read_endmembers(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown endmember file type"):
        read_endmembers(p.rename(tmp_path / "x.json"))


def _write_envi(tmp_path, E, *, byte_order=0, dtype="<f4", data_type=4, units="Nanometers"):
    (tmp_path / "lib.sli").write_bytes(np.asarray(E.values.T, dtype=dtype).tobytes())
    wl = ", ".join(f"{w:.3f}" for w in E.wavelength.values)
    names = ", ".join(E.endmember.values)
    (tmp_path / "lib.hdr").write_text(
        "ENVI\ndescription = {test library}\n"
        f"samples = {E.sizes['band']}\nlines = {E.sizes['endmember']}\nbands = 1\n"
        f"header offset = 0\nfile type = ENVI Spectral Library\ndata type = {data_type}\n"
        f"interleave = bsq\nbyte order = {byte_order}\nwavelength units = {units}\n"
        f"spectra names = {{{names}}}\nwavelength = {{{wl}}}\n")
    return tmp_path / "lib.sli"


@pytest.mark.parametrize("byte_order,dtype,data_type", [(0, "<f4", 4), (1, ">f8", 5)])
def test_envi_spectral_library(tmp_path, byte_order, dtype, data_type):
    E = make_endmembers(20, 3)
    p = _write_envi(tmp_path, E, byte_order=byte_order, dtype=dtype, data_type=data_type)
    for path in (p, p.with_suffix(".hdr")):
        got = read_endmembers(path)
        np.testing.assert_allclose(got.values, E.values, rtol=1e-6)
        assert list(got.endmember.values) == list(E.endmember.values)
        np.testing.assert_allclose(got.wavelength.values, E.wavelength.values, atol=1e-3)


def test_envi_truncated(tmp_path):
    E = make_endmembers(20, 3)
    p = _write_envi(tmp_path, E)
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(ValueError, match="header says"):
        read_endmembers(p)


def test_resample_linear_and_unsorted():
    wl = np.array([400.0, 600.0, 500.0, 700.0])  # unsorted, like AVIRIS overlaps
    E = xr.DataArray(np.array([[0.0], [2.0], [1.0], [3.0]]), dims=("band", "endmember"),
                     coords={"wavelength": ("band", wl), "endmember": ["a"]})
    r = resample_spectra(E, [450.0, 650.0])
    np.testing.assert_allclose(r.values[:, 0], [0.5, 2.5])
    np.testing.assert_allclose(r.wavelength.values, [450, 650])


def test_resample_errors():
    E = make_endmembers(20, 2)  # 400-2400 nm
    with pytest.raises(ValueError, match="do not overlap"):
        resample_spectra(E, [3000.0, 3100.0])
    with pytest.raises(ValueError, match="outside"):
        resample_spectra(E, [350.0, 500.0])
    with pytest.raises(ValueError, match="no 'wavelength'"):
        resample_spectra(E.drop_vars("wavelength"), [500.0])


def test_resample_onto_cube_then_unmix(scene):
    cube, E, truth = scene
    fine = resample_spectra(E, np.linspace(400, 2400, 200))
    back = resample_spectra(fine, cube)
    assert back.sizes["band"] == cube.sizes["band"]
    ab = cube.unmix.fcls(back, tol=1e-6)
    np.testing.assert_allclose(ab.values, truth.values, atol=2e-2)


# -- class libraries ---------------------------------------------------------------------------

def _rowwise_csv(path, E, classes, *, factor=10000.0, bom=True, class_header="Class", names=False):
    """A library as EMIT / SpectralUnmixing keep it: class, then one column a wavelength, x 10000."""
    wl = E.wavelength.values
    head = [class_header] + (["Name"] if names else []) + [f"{w:.3f}" for w in wl]
    lines = [",".join(head)]
    for j, c in enumerate(classes):
        cells = [c] + ([str(E.endmember.values[j])] if names else [])
        lines.append(",".join(cells + [f"{v * factor:.6f}" for v in E.values[:, j]]))
    path.write_bytes(("\ufeff" if bom else "").encode() + ("\n".join(lines) + "\n").encode())
    return path


def test_rowwise_class_csv_bom_and_x10000(tmp_path):
    E = make_endmembers(25, 6, seed=3)
    classes = ["SOIL", "PV", "NPV", "SOIL", "PV", "NPV"]
    p = _rowwise_csv(tmp_path / "lib.csv", E, classes)
    with pytest.warns(UserWarning, match="x 10000"):
        lib = read_endmembers(p)
    assert lib.dims == ("band", "endmember")
    assert list(lib["class"].values) == classes
    assert list(lib.endmember.values) == ["SOIL_1", "PV_1", "NPV_1", "SOIL_2", "PV_2", "NPV_2"]
    np.testing.assert_allclose(lib.values, E.values, rtol=1e-6)
    np.testing.assert_allclose(lib.wavelength.values, E.wavelength.values, atol=1e-3)
    assert lib.attrs["scale_applied"] == 1e-4
    # the same file with the scale given: no warning, the same values
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = read_endmembers(p, scale=1e-4)
    np.testing.assert_allclose(again.values, lib.values)


def test_rowwise_type_header_names_and_reflectance(tmp_path):
    E = make_endmembers(20, 3, seed=1)
    p = _rowwise_csv(tmp_path / "lib.csv", E, ["a", "b", "b"], factor=1.0, bom=False,
                     class_header="type", names=True)
    lib = read_endmembers(p)
    assert list(lib.endmember.values) == list(E.endmember.values)
    assert list(lib["class"].values) == ["a", "b", "b"]
    assert lib.attrs["scale_applied"] == 1.0
    np.testing.assert_allclose(lib.values, E.values, atol=1e-6)


def test_rowwise_round_trip(tmp_path):
    E = make_endmembers(15, 4).assign_coords({"class": ("endmember", ["x", "y", "x", "z"])})
    back = read_endmembers(write_endmembers(E, tmp_path / "lib.csv"))
    assert list(back["class"].values) == ["x", "y", "x", "z"]
    assert list(back.endmember.values) == list(E.endmember.values)
    np.testing.assert_allclose(back.values, E.values)


def test_rowwise_errors(tmp_path):
    from xr_unmix.errors import InputError

    p = tmp_path / "lib.csv"
    p.write_text("Class,500,600\nSOIL,0.1,0.2\n,0.2,0.3\n")
    with pytest.raises(InputError, match="line 3 has an empty class"):
        read_endmembers(p)
    p.write_text("Class,500,600\nSOIL,0.1\n")
    with pytest.raises(InputError, match="line 2 has 2 cells"):
        read_endmembers(p)
    p.write_text("Class,500,600\nSOIL,0.1,x\n")
    with pytest.raises(InputError, match="non-numeric"):
        read_endmembers(p)
    p.write_text("Class,500,600\nSOIL,30,50\n")  # percent or x 10000? refuse to guess
    with pytest.raises(InputError, match="pass scale="):
        read_endmembers(p)
    assert read_endmembers(p, scale=0.01).values.max() == pytest.approx(0.5)
    with pytest.raises(InputError, match="no column 'LEVEL_2'"):
        read_endmembers(p, class_column="LEVEL_2", scale=0.01)
    # a class library read as column-wise would fail on 'SOIL': the message says what to do
    p.write_text("wl,a\n500,SOIL\n600,0.2\n")
    with pytest.raises(ValueError, match="Class"):
        read_endmembers(p)


def test_classes_argument_on_envi(tmp_path):
    E = make_endmembers(20, 3)
    p = _write_envi(tmp_path, E)
    lib = read_endmembers(p, classes={"m0": "soil", "m1": "veg", "m2": "soil"})
    assert list(lib["class"].values) == ["soil", "veg", "soil"]
    lib = read_endmembers(p, classes=["a", "b", "c"])
    assert list(lib["class"].values) == ["a", "b", "c"]
    from xr_unmix.errors import InputError

    with pytest.raises(InputError, match="2 classes for 3 spectra"):
        read_endmembers(p, classes=["a", "b"])


@pytest.mark.parametrize("method", ["fcls", "nnls", "sunsal"])
def test_estimators_keep_class_and_groupby_sums_to_one(method):
    from xr_unmix.testing import make_cube

    cube, E4, _ = make_cube(endmembers=make_endmembers(30, 4, seed=5))
    lib = E4.assign_coords({"class": ("endmember", ["soil", "veg", "npv", "soil"])})
    ab = getattr(cube.unmix, method)(lib)
    assert list(ab["class"].values) == ["soil", "veg", "npv", "soil"]
    frac = ab.groupby("class").sum()
    assert sorted(frac["class"].values) == ["npv", "soil", "veg"]
    if method != "nnls":
        np.testing.assert_allclose(frac.sum("class").values, 1.0, atol=1e-5)
    # lazy results keep it too
    lazy = getattr(cube.chunk({"y": 12, "x": 16}).unmix, method)(lib)
    assert list(lazy["class"].values) == ["soil", "veg", "npv", "soil"]


def test_library_repeated_names_made_unique(tmp_path):
    E = make_endmembers(20, 3).assign_coords(endmember=["ash", "ash", "soil"])
    p = _write_envi(tmp_path, E.assign_coords(endmember=["ash", "ash", "soil"]))
    lib = read_endmembers(p)
    assert list(lib.endmember.values) == ["ash", "ash#2", "soil"]


def test_earthlib_library_has_five_classes():
    pytest.importorskip("earthlib", reason="earthlib (the sample scenes' extra) is not installed")
    from xr_unmix.library import load_library

    lib = load_library("earthlib")
    assert sorted(set(lib["class"].values)) == ["bare", "built", "burned", "npv", "vegetation"]
    assert lib.sizes["endmember"] == lib["class"].size
