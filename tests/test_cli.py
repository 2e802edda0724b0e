"""The command line: run (COG, Zarr, quality layer, errors) and demo wiring."""

import json
import re

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner

from xr_unmix.cli import main
from xr_unmix.endmembers import write_endmembers
from xr_unmix.io import open_abundance, open_cube
from xr_unmix.testing import assert_cli_error, make_cube, write_cube_tif


@pytest.fixture
def files(tmp_path):
    cube, E, truth = make_cube(40, 48)
    scene = write_cube_tif(cube, tmp_path / "scene.tif")
    em = write_endmembers(E, tmp_path / "em.csv")
    return tmp_path, scene, em, cube, E, truth


def test_open_cube_reads_wavelengths(files):
    _, scene, _, cube, _, _ = files
    c = open_cube(scene, chunks=16)
    np.testing.assert_allclose(c.wavelength.values, cube.wavelength.values, atol=1e-3)
    assert c.chunks is not None and c.rio.crs == cube.rio.crs


def test_run_to_cog_and_zarr(files):
    tmp, scene, em, cube, _, truth = files
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--method", "fcls",
                                  "--out", str(tmp / "ab.tif"), "--chunk", "16", "--quality"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp / "ab.tif") as src:
        assert src.count == 3 and src.descriptions == ("m0", "m1", "m2")
        assert src.crs == cube.rio.crs
        ab = src.read()
    np.testing.assert_allclose(ab, truth.values, atol=2e-2)
    rmse = open_abundance(tmp / "ab_rmse.tif")  # noise-free scene, its own endmembers: ~0
    assert rmse.sizes["y"] == 40 and rmse.sizes["x"] == 48 and float(rmse.max()) < 1e-3
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--method", "sunsal",
                                  "--lam", "0.001", "--out", str(tmp / "ab.zarr")])
    assert r.exit_code == 0, r.output
    z = open_abundance(tmp / "ab.zarr")
    assert z.rio.crs == cube.rio.crs and z.attrs["lam"] == 0.001


def test_run_errors(files, tmp_path):
    tmp, scene, em, _, E, _ = files
    # band mismatch, an existing --out: tests/test_bad_input.py
    r = CliRunner().invoke(main, ["run", str(scene), "--method", "admm", "--out", str(tmp / "y.tif")])
    assert_cli_error(r, r"^Error: --model: method 'admm' needs a trained model file")
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--out",
                                  str(tmp / "y.png")])
    assert_cli_error(r, r"--out: output .*y\.png: use a \.tif .* or \.zarr path")


def test_run_resample(files):
    tmp, scene, _, cube, E, truth = files
    from xr_unmix import resample_spectra

    fine = write_endmembers(resample_spectra(E, np.linspace(400, 2400, 120)), tmp / "fine.csv")
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(fine), "--resample",
                                  "--out", str(tmp / "r.tif")])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp / "r.tif") as src:
        np.testing.assert_allclose(src.read(), truth.values, atol=3e-2)


def test_version():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "xr-unmix" in r.output


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_non_georeferenced_scene_warns_but_writes(tmp_path):
    cube, E, _ = make_cube(16, 16, crs=None)
    bare = xr.DataArray(cube.values, dims=cube.dims, coords={"wavelength": ("band", cube.wavelength.values)})
    scene = write_cube_tif(bare, tmp_path / "bare.tif")
    em = write_endmembers(E, tmp_path / "em.csv")
    with pytest.warns(UserWarning, match="without a CRS"):
        r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--out",
                                      str(tmp_path / "o.tif")], catch_exceptions=False)
    assert r.exit_code == 0, r.output


# -- blind pipeline and training -------------------------------------------------------------------


def test_run_blind_vca(tmp_path):
    """--endmembers vca:N: extraction seeded, names vca0.., quality layer from the same endmembers."""
    from xr_unmix.testing import make_endmembers

    E = make_endmembers(n_endmembers=3, seed=1)
    cube, E, truth = make_cube(40, 48, E, snr_db=40, seed=1)
    # pure pixels present, so VCA can find the endmembers
    R = E.sizes["endmember"]
    for r in range(R):
        cube[:, r, r] = E.values[:, r]
        truth[:, r, r] = np.eye(R)[r]
    scene = write_cube_tif(cube, tmp_path / "scene.tif")
    outs = []
    for name in ("a.tif", "b.tif"):
        r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", f"vca:{R}", "--seed", "3",
                                      "--method", "sunsal", "--out", str(tmp_path / name),
                                      "--quality"])
        assert r.exit_code == 0, r.output
        outs.append(open_abundance(tmp_path / name))
    assert list(outs[0].endmember.values) == [f"vca{i}" for i in range(R)]
    np.testing.assert_array_equal(outs[0].values, outs[1].values)  # same seed, same map
    q = open_abundance(tmp_path / "a_rmse.tif")
    assert float(q.max()) < 0.05  # the extracted endmembers explain the scene
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", "vca:x", "--out",
                                  str(tmp_path / "c.tif")])
    assert_cli_error(r, r"--endmembers: endmembers 'vca:x': use 'vca:N' with N >= 2")
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", "vca:1", "--out",
                                  str(tmp_path / "c.tif")])
    assert_cli_error(r, r"--endmembers: endmembers 'vca:1': use 'vca:N' with N >= 2")
    assert not (tmp_path / "c.tif").exists()
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", "nofile.csv", "--out",
                                  str(tmp_path / "c.tif")])
    assert_cli_error(r, "no endmember file at nofile.csv")


def test_train_and_run_admm_from_labels(files):
    tmp, scene, em, cube, E, truth = files
    from xr_unmix.io import to_cog

    labels = to_cog(truth.rio.write_crs(cube.rio.crs).rio.write_transform(cube.rio.transform()),
                    tmp / "truth.tif")
    model = tmp / "admm.safetensors"
    r = CliRunner().invoke(main, ["train", "--endmembers", str(em), "--method", "admm", "--out",
                                  str(model), "--scene", str(scene), "--labels", str(labels),
                                  "--epochs", "2", "--layers", "3"])
    assert r.exit_code == 0, r.output
    from xr_unmix import load_model

    net = load_model(model)
    assert net.layers == 3 and [str(n) for n in net.endmembers.endmember.values] == ["m0", "m1", "m2"]
    r = CliRunner().invoke(main, ["run", str(scene), "--method", "admm", "--model", str(model),
                                  "--out", str(tmp / "ab.zarr"), "--quality"])
    assert r.exit_code == 0, r.output
    ab = open_abundance(tmp / "ab.zarr")
    np.testing.assert_allclose(ab.sum("endmember"), 1.0, atol=1e-4)
    rmse = open_abundance(tmp / "ab_rmse.zarr")
    assert rmse.sizes["y"] == 40 and np.isfinite(rmse.values).all() and float(rmse.min()) >= 0


def test_train_deq_unsupervised_and_supervised(files):
    tmp, scene, em, cube, E, truth = files
    from xr_unmix import load_model
    from xr_unmix.io import to_cog

    m1 = tmp / "deq.safetensors"
    r = CliRunner().invoke(main, ["train", "--endmembers", "vca:3", "--method", "deq", "--out",
                                  str(m1), "--scene", str(scene), "--epochs", "2"])
    assert r.exit_code == 0, r.output
    line = r.output.strip()
    assert "\n" not in line and line.startswith(f"model -> {m1}  ")
    if "warning" in line:  # no epoch beat the start: said, with both objectives
        assert re.search(r"warning: training did not improve on its start: objective \S+ at the "
                         r"start, \S+ at best after training \(epoch \d\)", line), line
    else:  # the saved model's loss and epoch
        report = json.loads(line.split("  ", 1)[1])
        assert report["best_epoch"] in (1, 2) and report["loss"] < report["initial_loss"], report
    # a learning rate that wrecks the model: the saved model is the start, and the line says so
    r = CliRunner().invoke(main, ["train", "--endmembers", "vca:3", "--method", "deq", "--out",
                                  str(tmp / "bad.safetensors"), "--scene", str(scene), "--epochs", "3",
                                  "--lr", "50"])
    assert r.exit_code == 0, r.output
    assert re.fullmatch(r"model -> \S+  warning: training did not improve on its start: objective "
                        r"\S+ at the start, .*the returned model is the untrained start \(FCLS\).*\n",
                        r.output), r.output
    assert load_model(m1).endmembers.sizes["endmember"] == 3
    labels = to_cog(truth.rio.write_crs(cube.rio.crs).rio.write_transform(cube.rio.transform()),
                    tmp / "truth.tif")
    m2 = tmp / "deqs.safetensors"
    r = CliRunner().invoke(main, ["train", "--endmembers", str(em), "--method", "deq", "--out",
                                  str(m2), "--scene", str(scene), "--labels", str(labels),
                                  "--epochs", "1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["run", str(scene), "--method", "deq", "--model", str(m2),
                                  "--out", str(tmp / "deq.tif"), "--chunk", "24"])
    assert r.exit_code == 0, r.output
    ab = open_abundance(tmp / "deq.tif")
    assert ab.sizes == {"endmember": 3, "y": 40, "x": 48}
    assert np.isfinite(ab.values).all()
    m3 = tmp / "deq_pre.safetensors"
    r = CliRunner().invoke(main, ["train", "--endmembers", str(em), "--method", "deq", "--out", str(m3),
                                  "--scene", str(scene), "--epochs", "1", "--precondition", "1e-3"])
    assert r.exit_code == 0, r.output
    assert load_model(m3).config["precondition"] == 1e-3


def test_train_errors(files):
    tmp, scene, em, cube, E, truth = files
    from xr_unmix.io import to_cog

    def train(*args):
        return CliRunner().invoke(main, ["train", "--out", str(tmp / "m.safetensors"), *args])

    r = train("--endmembers", "vca:3", "--method", "deq")
    assert_cli_error(r, r"--endmembers vca:3 extracts from a scene: give --scene")
    r = train("--endmembers", str(em), "--method", "admm", "--labels", str(scene))
    assert_cli_error(r, r"--labels needs --scene")
    r = train("--endmembers", str(em), "--method", "admm", "--scene", str(scene))
    assert_cli_error(r, r"--method admm trains on labels")
    r = train("--endmembers", str(em), "--method", "deq", "--layers", "3")
    assert_cli_error(r, r"--layers is for --method admm")
    r = train("--endmembers", str(em), "--method", "admm", "--precondition", "1e-3")
    assert_cli_error(r, r"--precondition is for --method deq")
    r = train("--endmembers", str(em), "--method", "deq", "--precondition", "-1")
    assert_cli_error(r, r"precondition must be >= 0")
    small = to_cog(truth.isel(y=slice(0, 10)).rio.write_crs(cube.rio.crs), tmp / "small.tif")
    r = train("--endmembers", str(em), "--method", "admm", "--scene", str(scene), "--labels",
              str(small))
    assert_cli_error(r, r"the labels are 10x48 px but the scene is 40x48")
    # labels that do not sum to one: the model's own check, reported without a traceback
    bad = to_cog((truth * 2).rio.write_crs(cube.rio.crs).rio.write_transform(cube.rio.transform()),
                 tmp / "bad.tif")
    r = train("--endmembers", str(em), "--method", "admm", "--scene", str(scene), "--labels",
              str(bad), "--epochs", "1")
    assert_cli_error(r, r"sum")
    assert not (tmp / "m.safetensors").exists()
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--chunk", "abc",
                                  "--out", str(tmp / "x.tif")])
    assert_cli_error(r, r"--chunk: chunk 'abc': expected a number of pixels or 'auto'")
