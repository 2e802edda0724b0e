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
