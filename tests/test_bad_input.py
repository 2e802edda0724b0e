"""Bad input and faults (issue 12): one case per row of the issue, grouped as there.

Each case asserts the exact error (type and words) or the documented treatment. docs/user_guide.md
("When something is wrong") lists the same cases with what the user sees. Rows tested elsewhere are
referenced, not copied:

- a failed write or overwrite leaves nothing / the old output: tests/io/test_io.py
  (``test_failure_mid_write_leaves_nothing``, ``test_overwrite_semantics``);
- ``batch_size=0`` through the API: tests/test_api.py (``test_admm_batch_size_gives_the_same_map``);
- integer cubes in memory against reflectance endmembers: tests/test_api.py
  (``test_stored_integers_against_reflectance_endmembers_warn``);
- a corrupt scene file named on open: tests/io/test_io.py (``test_open_cube_names_a_corrupt_file``);
- tensors that do not match a model's config: tests/models/test_models_base.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner

import xr_unmix
from xr_unmix import pipeline
from xr_unmix.cli import main
from xr_unmix.endmembers import read_endmembers, write_endmembers
from xr_unmix.errors import (
    DimensionError,
    InputError,
    InputTypeError,
    ModelFileError,
    OutputError,
    OutputExistsError,
    ParameterError,
    SchedulerError,
    WavelengthMismatchError,
)
from xr_unmix.io import open_abundance, open_cube, read_wavelengths, to_cog, to_zarr
from xr_unmix.testing import assert_cli_error as assert_one_line
from xr_unmix.testing import make_cube, tamper_model_file, write_cube_tif

REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------------

def cli(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


@pytest.fixture
def files(tmp_path: Path, scene) -> tuple[Path, Path, Path]:
    cube, E, _ = scene
    return tmp_path, write_cube_tif(cube, tmp_path / "scene.tif"), write_endmembers(E, tmp_path / "em.csv")


@pytest.fixture
def ab(scene) -> xr.DataArray:
    cube, E, _ = scene
    return xr_unmix.fcls(cube.chunk({"y": 12, "x": 16}), E)


def _in_task(ab: xr.DataArray, action) -> xr.DataArray:
    """``ab`` whose first block runs ``action()`` when it is computed (i.e. in the middle of a write)."""
    done: list[bool] = []

    def block(b: np.ndarray) -> np.ndarray:
        if b.size and not done:  # not dask's meta call (an empty block)
            done.append(True)
            action()
        return b

    return ab.copy(data=ab.data.map_blocks(block, dtype=ab.dtype))


# == Data loss ==============================================================================

@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_another_writer_creates_the_target_mid_write(tmp_path: Path, ab, fmt: str) -> None:
    target = tmp_path / f"a.{fmt}"

    def other_writer() -> None:
        if fmt == "tif":
            target.write_bytes(b"II*\x00 the other writer's file")
        else:
            target.mkdir()
            (target / "zarr.json").write_text("{}")
            (target / "theirs.txt").write_text("keep")

    writer = to_cog if fmt == "tif" else to_zarr
    with pytest.raises(OutputExistsError, match="created by another writer while this one ran; it was "
                                                "left as it is"):
        writer(_in_task(ab, other_writer), target)
    if fmt == "tif":
        assert target.read_bytes() == b"II*\x00 the other writer's file"
    else:
        assert (target / "theirs.txt").read_text() == "keep"
    assert leftovers(tmp_path) == []


def test_two_cli_runs_on_one_target(files, monkeypatch) -> None:
    tmp, scene, em = files
    out = tmp / "ab.tif"
    # one after the other: the second refuses before computing anything
    assert cli("run", scene, "--endmembers", em, "--out", out).exit_code == 0
    before = out.read_bytes()
    assert_one_line(cli("run", scene, "--endmembers", em, "--out", out),
                    r"ab\.tif exists; add --overwrite to replace it")
    assert out.read_bytes() == before
    # at the same time: run B (another process) starts and finishes while run A computes; A must not
    # replace B's file
    both = tmp / "both.tif"
    unmix, second = pipeline.unmix_scene, []

    def run_b() -> None:
        second.append(subprocess.run(
            [sys.executable, "-m", "xr_unmix.cli", "run", str(scene), "--endmembers", str(em),
             "--method", "nnls", "--out", str(both)], env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=120, check=False))

    def a_with_b_meanwhile(*args, **kwargs):
        ab, E = unmix(*args, **kwargs)
        return (_in_task(ab, run_b), E) if not second else (ab, E)

    monkeypatch.setattr(pipeline, "unmix_scene", a_with_b_meanwhile)
    r = cli("run", scene, "--endmembers", em, "--out", both)
    assert second and second[0].returncode == 0, second[0].stderr[-2000:] if second else "B did not run"
    assert_one_line(r, r"both\.tif was created by another writer while this one ran; it was left as it is")
    assert open_abundance(both).attrs["method"] == "nnls"  # B's map, untouched
    assert leftovers(tmp) == []


@pytest.mark.parametrize("name, make, writer", [
    ("user.zarr", "folder", to_zarr),   # a folder of the user's files named like a store
    ("x.tif", "folder", to_cog),        # a directory named x.tif
    ("x.tif", "text", to_cog),          # a file that is not a TIFF
    ("y.zarr", "text", to_zarr),        # a file where a store would go
])
def test_overwrite_replaces_only_the_same_kind(tmp_path: Path, ab, name, make, writer) -> None:
    target = tmp_path / name
    if make == "folder":
        target.mkdir()
        (target / "thesis.txt").write_text("years of work")
        kind = "a directory"
    else:
        target.write_text("years of work")
        kind = "a file that is not a TIFF"
    with pytest.raises(OutputError, match=f"refusing to replace .*{re.escape(name)}: it is {kind}"):
        writer(ab, target, overwrite=True)
    assert (target / "thesis.txt" if make == "folder" else target).read_text() == "years of work"
    assert leftovers(tmp_path) == []


def test_overwrite_over_a_symlink_leaves_no_old_copy(tmp_path: Path, ab) -> None:
    real = to_zarr(ab, tmp_path / "real.zarr")
    link = tmp_path / "a.zarr"
    link.symlink_to(real)
    to_zarr(ab * 0 + 0.5, link, overwrite=True)
    # the link itself is replaced by the new store; the store it pointed to is left alone
    assert not link.is_symlink() and float(open_abundance(link).max()) == 0.5
    np.testing.assert_allclose(open_abundance(real).values, ab.values)
    assert leftovers(tmp_path) == []


_KILLED_WRITER = """
import sys, time, pathlib
import numpy as np
import xr_unmix
from xr_unmix.testing import make_cube
cube, E, _ = make_cube(64, 64)
ab = xr_unmix.fcls(cube.chunk({"y": 32, "x": 32}), E)
flag = pathlib.Path(sys.argv[2])
def slow(b):
    if not b.size:  # dask's meta call
        return b
    flag.write_text("writing")
    time.sleep(60)
    return b
xr_unmix.to_cog(ab.copy(data=ab.data.map_blocks(slow, dtype=ab.dtype)), sys.argv[1])
"""


def test_sigkill_then_rerun_cleans_scratch(tmp_path: Path) -> None:
    target, flag = tmp_path / "a.tif", tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), str(flag)],
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flag.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert not target.exists()
    assert [p.startswith(".a.tif.partial-") for p in leftovers(tmp_path)] == [True]
    cube, E, truth = make_cube(64, 64)
    to_cog(xr_unmix.fcls(cube, E), target)  # the rerun
    assert leftovers(tmp_path) == []
    np.testing.assert_allclose(open_abundance(target).values, truth.values, atol=1e-4)


def test_scratch_of_a_running_writer_is_kept(tmp_path: Path, ab) -> None:
    from xr_unmix.io.atomic import scratch_path

    live = scratch_path(tmp_path / "a.tif")  # this process's tag: its writer still runs
    live.write_bytes(b"in progress")
    to_cog(ab, tmp_path / "a.tif")
    assert live.exists()


# == Silently wrong =========================================================================

def _uint16_scene(tmp_path: Path, cube: xr.DataArray) -> Path:
    ints = (cube * 10000).round().astype("uint16")
    ints = ints.assign_coords(wavelength=cube.wavelength)
    return write_cube_tif(ints, tmp_path / "ints.tif")


def test_uint16_without_scale_tag_warns_in_api_and_refused_by_cli(tmp_path: Path, scene) -> None:
    cube, E, _ = scene
    path = _uint16_scene(tmp_path, cube)
    opened = open_cube(path)
    with pytest.warns(UserWarning, match="the file stores uint16 values .* has no scale tag"):
        opened.unmix.fcls(E)
    em = write_endmembers(E, tmp_path / "em.csv")
    r = cli("run", path, "--endmembers", em, "--out", tmp_path / "o.tif")
    assert_one_line(r, "stores uint16 values .*gdal_edit.py -scale 0.0001")
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("case, words", [
    ("descending", r"2400\.0-400\.0 nm, descending.*resample_spectra"),
    ("shifted", r"5400\.0-7400\.0 nm, ascending.*resample_spectra"),
])
def test_wavelengths_must_agree(tmp_path: Path, scene, case: str, words: str) -> None:
    cube, E, _ = scene
    if case == "descending":  # a CSV written in descending order
        bad = E.isel(band=slice(None, None, -1))
    else:  # the same spectra at 5400-7400 nm
        bad = E.assign_coords(wavelength=E.wavelength + 5000)
    csv = write_endmembers(bad, tmp_path / "bad.csv")
    with pytest.raises(WavelengthMismatchError, match=words):
        cube.unmix.fcls(read_endmembers(csv))
    with pytest.raises(WavelengthMismatchError, match=words):
        pipeline.load_endmembers(str(csv), cube)


@pytest.mark.parametrize("header, expected", [
    ("spectrum_nm", "nm"), ("Wavelength (um)", "um"), ("microns", "um"), ("medium", "nm"),
    ("band_number", None), ("band", None),
])
def test_csv_wavelength_units_are_words(tmp_path: Path, header: str, expected: str | None) -> None:
    values = np.array([0.45, 0.55, 0.65]) if expected == "um" else np.array([450.0, 550.0, 650.0])
    if expected is None:
        values = np.array([1.0, 2.0, 3.0])
    csv = tmp_path / "e.csv"
    csv.write_text(f"{header},a,b\n" + "".join(f"{w},0.1,0.2\n" for w in values))
    E = read_endmembers(csv)
    if expected is None:  # band numbers are not wavelengths
        assert "wavelength" not in E.coords
    else:
        np.testing.assert_allclose(E.wavelength.values, [450.0, 550.0, 650.0])


def test_numeric_band_descriptions_are_not_wavelengths(tmp_path: Path, scene) -> None:
    cube, _, _ = scene
    path = tmp_path / "numbered.tif"
    cube.drop_vars("wavelength").rio.to_raster(path)
    with rasterio.open(path, "r+") as ds:
        for i in range(1, ds.count + 1):
            ds.set_band_description(i, str(i))
    assert read_wavelengths(path) is None
    assert "wavelength" not in open_cube(path).coords
    with rasterio.open(path, "r+") as ds:  # a description that states its unit is a wavelength
        for i in range(1, ds.count + 1):
            ds.set_band_description(i, f"Band {i} ({400 + 10 * i} nm)")
    np.testing.assert_allclose(read_wavelengths(path), 400 + 10 * np.arange(1, 31))


def test_nan_weights_refused_by_load_model(tmp_path: Path, scene) -> None:
    import torch

    _, E, _ = scene
    saved = xr_unmix.UADMMNet.from_endmembers(E).save(tmp_path / "m.safetensors")
    name = next(k for k in xr_unmix.UADMMNet.from_endmembers(E).state_dict() if k.startswith("W"))
    bad = tamper_model_file(saved, tmp_path / "nan.safetensors",
                            tensors={name: lambda t: torch.full_like(t, float("nan"))})
    with pytest.raises(ModelFileError, match=f"nan.safetensors: tensor {name!r} holds .*NaN/inf"):
        xr_unmix.load_model(bad)
    # the normalisation keeps non-finite output non-finite (never a uniform 1/R)
    net = xr_unmix.UADMMNet.from_endmembers(E)
    z = torch.tensor([[float("nan"), 0.2, 0.3], [0.0, 0.0, 0.0]])
    out = net.normalize(z)
    assert torch.isnan(out[0]).all() and torch.allclose(out[1], torch.full((3,), 1 / 3))


@pytest.mark.parametrize("lam", [1e4, 1e6])
def test_float32_sunsal_keeps_constraints_at_large_lam(scene, lam: float) -> None:
    cube, E, _ = scene
    a = cube.unmix.sunsal(E, lam=lam).values  # ANC + ASC: lam changes nothing on the simplex
    assert a.dtype == np.float32 and float(a.min()) >= 0.0
    assert float(np.abs(a.sum(0) - 1).max()) <= 1e-5
    np.testing.assert_allclose(a, cube.unmix.fcls(E).values, atol=1e-6)
    asc = cube.unmix.sunsal(E, lam=lam, anc=False).values  # ASC only: solved in float64
    assert asc.dtype == np.float32 and float(np.abs(asc.sum(0) - 1).max()) <= 1e-5
    np.testing.assert_allclose(asc, cube.unmix.sunsal(E, lam=lam, anc=False, dtype="float64").values,
                               atol=1e-5)
    assert float(asc.min()) >= -1e-5  # large lam: next to the simplex (was -0.054 at 1e6)


def test_resume_rechecks_a_zarr_with_a_deleted_chunk(files) -> None:
    from xr_unmix.batch import run_batch

    tmp, scene, em = files
    kw = {"out_dir": tmp / "out", "method": "fcls", "endmembers": str(em), "formats": ["zarr"],
          "chunk": 16, "progress": False}
    assert run_batch([str(scene)], **kw)["summary"]["done"] == 1
    chunk = next(p for p in (tmp / "out" / "scene.zarr" / "abundance" / "c").rglob("*") if p.is_file())
    chunk.unlink()
    again = run_batch([str(scene)], **kw)
    assert again["summary"] == {"done": 1, "skipped": 0, "failed": 0, "total": 1}
    assert np.isfinite(open_abundance(tmp / "out" / "scene.zarr").values).all()


@pytest.mark.parametrize("dim, words", [("x", "not monotonic"), ("y", "repeated")])
def test_to_cog_refuses_an_irregular_grid(tmp_path: Path, ab, dim: str, words: str) -> None:
    c = ab[dim].values.copy()
    if words == "repeated":
        c[3] = c[2]
    else:
        c[[3, 4]] = c[[4, 3]]
    bad = ab.assign_coords({dim: c})
    with pytest.raises(DimensionError, match=f"the {dim} coordinates are {words}.*sortby"):
        to_cog(bad, tmp_path / "g.tif")
    assert not (tmp_path / "g.tif").exists()


def test_batch_size_zero_refused_by_cli(files) -> None:
    tmp, scene, _ = files
    r = cli("run", scene, "--method", "admm", "--model", scene, "--batch-size", "0", "--out",
            tmp / "o.tif")
    assert_one_line(r, r"--batch-size.*0 is not in the range x>=1")


def test_empty_endmember_name(tmp_path: Path, scene) -> None:
    cube, E, _ = scene
    csv = write_endmembers(E, tmp_path / "em.csv")
    text = csv.read_text().splitlines()
    head = text[0].split(",")
    head[2] = ""
    csv.write_text("\n".join([",".join(head), *text[1:]]) + "\n")
    with pytest.raises(InputError, match="endmember 2 of 3 has an empty name"):
        cube.unmix.fcls(read_endmembers(csv))


@pytest.mark.parametrize("dtype, words", [(bool, "booleans"), (np.complex64, "complex numbers")])
def test_bool_and_complex_cubes(scene, dtype, words: str) -> None:
    cube, E, _ = scene
    with pytest.raises(InputTypeError, match=f"the cube is {np.dtype(dtype)} \\({words}\\)"):
        cube.astype(dtype).unmix.fcls(E)


# == Hangs and unbounded work ===============================================================

@contextlib.contextmanager
def _mute_server():
    """A TCP port that accepts connections and never says a word."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(srv.accept()[0])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        t.join(2)
        for c in conns:
            c.close()
        srv.close()


def _closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


@pytest.mark.slow
def test_port_that_does_not_speak_dask(files) -> None:
    tmp, scene, em = files
    with _mute_server() as address:
        t0 = time.monotonic()
        r = cli("run", scene, "--endmembers", em, "--scheduler", address, "--out", tmp / "o.tif")
        elapsed = time.monotonic() - t0
    assert_one_line(r, f"--scheduler: no Dask scheduler answered at {address} within 10 s "
                       r"\(timed out\)")
    assert elapsed <= 20
    assert not (tmp / "o.tif").exists()


def test_closed_port(files) -> None:
    from xr_unmix._connect import probe_scheduler

    tmp, scene, em = files
    address = _closed_port()
    t0 = time.monotonic()
    r = cli("run", scene, "--endmembers", em, "--scheduler", address, "--out", tmp / "o.tif")
    assert_one_line(r, f"--scheduler: no Dask scheduler answered at {address} "
                       r"\(Connection refused\); check the address")
    with pytest.raises(SchedulerError, match=r"not a scheduler address \(host:port"):
        probe_scheduler("8786")
    assert time.monotonic() - t0 <= 5  # refused at once, not retried until a timeout


@pytest.mark.parametrize("config, words", [
    ({"hidden": 6000},
     (r"its DEQUnmix config does not fit its tensors \(a damaged or tampered file\): "
      r"cnn.convs.0.weight is \[16, 6, 3, 3\] in the file but \[6000, 6, 3, 3\] by its config"
      r".*hidden=6000")),
    ({"max_iter": 10**9, "tol": 0.0},
     r"invalid DEQUnmix config \(max_iter and b_max_iter must be in \[1, 10000\], got 1000000000"),
])
def test_tampered_model_config_refused_before_building(tmp_path: Path, scene, config, words) -> None:
    _, E, _ = scene
    saved = xr_unmix.DEQUnmix.from_endmembers(E, seed=0).save(tmp_path / "deq.safetensors")
    bad = tamper_model_file(saved, tmp_path / "bad.safetensors", config=config)
    t0 = time.monotonic()
    with pytest.raises(ModelFileError, match=f"bad.safetensors: {words}"):
        xr_unmix.load_model(bad)
    assert time.monotonic() - t0 < 1.0  # checked on torch's meta device: not 2.85 GB in 24 s


def test_unbounded_solver_settings_refused(scene) -> None:
    cube, E, _ = scene
    with pytest.raises(ValueError, match=r"max_iter and b_max_iter must be in \[1, 10000\]"):
        xr_unmix.DEQUnmix.from_endmembers(E, max_iter=10**9, tol=0.0)
    with pytest.raises(ValueError, match=r"tol and b_tol must be finite and >= 0"):
        xr_unmix.DEQUnmix.from_endmembers(E, tol=float("nan"))
    with pytest.raises(ParameterError, match=r"max_iter must be in \[1, 100000\], got 1000000000"):
        cube.unmix.sunsal(E, max_iter=10**9, tol=0.0)


# == Crashes and unclear errors =============================================================

@pytest.mark.parametrize("dim", ["band", "y", "x"])
def test_zero_size_dims(scene, dim: str) -> None:
    cube, E, _ = scene
    with pytest.raises(DimensionError, match=f"the cube is empty along {dim}"):
        cube.isel({dim: slice(0, 0)}).unmix.fcls(E)


def test_unknown_dask_chunks(scene) -> None:
    cube, E, _ = scene
    data = cube.chunk({"y": 12}).data
    lazy = data[:, data[0, :, 0] > -1]  # boolean indexing: chunk sizes unknown
    bad = xr.DataArray(lazy, dims=cube.dims, coords={"band": cube.band})
    with pytest.raises(InputError, match=r"dask chunk sizes are unknown \(NaN\).*compute_chunk_sizes"):
        bad.unmix.fcls(E)


def test_dataset_instead_of_dataarray(scene) -> None:
    cube, E, _ = scene
    with pytest.raises(InputTypeError, match=r"got Dataset \(pick one of its variables, e.g. "
                                             r"ds\['reflectance'\]\)"):
        xr_unmix.api.fcls(cube.to_dataset(name="reflectance"), E)


def test_latin1_csv(tmp_path: Path, scene) -> None:
    cube, E, _ = scene
    csv = tmp_path / "latin.csv"
    csv.write_bytes(write_endmembers(E, tmp_path / "em.csv").read_text().replace(
        "m0", "Végétation", 1).encode("latin-1"))
    with pytest.raises(InputError, match="latin.csv: not UTF-8 text.*iconv"):
        read_endmembers(csv)
    r = cli("run", write_cube_tif(cube, tmp_path / "s.tif"), "--endmembers", csv, "--out",
            tmp_path / "o.tif")
    assert_one_line(r, "latin.csv: not UTF-8")


def test_corrupt_tile_names_the_files(tmp_path: Path, scene) -> None:
    cube, E, _ = scene
    path = tmp_path / "scene.tif"
    cube.rio.to_raster(path, tiled=True, blockxsize=16, blockysize=16, compress="DEFLATE")
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
    with open(path, "r+b") as f:  # a tile whose bytes were damaged in transfer
        f.seek(offset)
        f.write(b"\xff" * 64)
    lazy = open_cube(path, chunks=16)
    target = tmp_path / "out.tif"
    with pytest.raises(OutputError, match=f"writing {re.escape(str(target))} failed: .*scene.tif"):
        to_cog(lazy.unmix.fcls(E), target)
    assert not target.exists() and leftovers(tmp_path) == []


@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """Writes past ``nbytes`` fail with EFBIG, as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_write_failure_names_the_path(tmp_path: Path, scene, fmt: str) -> None:
    _, E, _ = scene
    big = xr_unmix.fcls(make_cube(256, 256)[0], E)
    target = tmp_path / f"full.{fmt}"
    writer = to_cog if fmt == "tif" else to_zarr
    with _file_size_limit(20_000), pytest.raises(OutputError,
                                                 match=f"writing {re.escape(str(target))} failed"):
        writer(big, target)
    assert not target.exists() and leftovers(tmp_path) == []


def test_huge_pixel_is_nan_without_a_false_residual(scene) -> None:
    cube, E, _ = scene
    c = cube.copy()
    c[4, 5, 6] = 3e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("fcls", "sunsal"):
            a = getattr(c.unmix, method)(E).values
            assert np.isnan(a[:, 5, 6]).all()
            assert np.isfinite(a).sum() == a.size - a.shape[0]


# -- the command line ----------------------------------------------------------------------------------

def test_cli_band_mismatch(files, scene) -> None:
    tmp, scene_tif, _ = files
    _, E, _ = scene
    fewer = write_endmembers(E.isel(band=slice(0, 20)), tmp / "fewer.csv")
    r = cli("run", scene_tif, "--endmembers", fewer, "--out", tmp / "x.tif")
    assert_one_line(r, "the endmembers have 20 bands but the cube has 30.*add --resample")
    assert not (tmp / "x.tif").exists()


def test_cli_model_of_the_wrong_kind(files, scene) -> None:
    tmp, scene_tif, _ = files
    _, E, _ = scene
    model = xr_unmix.UADMMNet.from_endmembers(E).save(tmp / "admm.safetensors")
    r = cli("run", scene_tif, "--method", "deq", "--model", model, "--out", tmp / "x.tif")
    assert_one_line(r, "admm.safetensors holds a UADMMNet model, which method 'deq' cannot run; "
                       "use method 'admm'")


@pytest.mark.parametrize("args, words", [
    (["--workers", "0"], r"--workers.*0 is not in the range x>=1"),
    (["--lam", "-1", "--method", "sunsal"], r"--lam: lam must be a finite number >= 0"),
    (["--lam", "nan", "--method", "sunsal"], r"--lam: lam must be a finite number >= 0"),
])
def test_cli_parameters_refused_before_compute(files, monkeypatch, args, words) -> None:
    tmp, scene, em = files

    def no_compute(*a, **k):
        raise AssertionError("computation started")

    monkeypatch.setattr(pipeline, "unmix_scene", no_compute)
    assert_one_line(cli("run", scene, "--endmembers", em, "--out", tmp / "o.tif", *args), words)


def test_cli_cuda_without_a_gpu(files) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tmp, scene, em = files
    r = cli("run", scene, "--endmembers", em, "--device", "cuda", "--out", tmp / "o.tif")
    assert_one_line(r, "--device: .*no CUDA GPU")


def test_cli_bug_keeps_its_traceback(files, monkeypatch) -> None:
    tmp, scene, em = files

    def bug(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipeline, "unmix_scene", bug)
    r = cli("run", scene, "--endmembers", em, "--out", tmp / "o.tif")
    assert r.exit_code == 1 and isinstance(r.exception, ZeroDivisionError)


_READ_ONLY = """
import json, sys
from click.testing import CliRunner
from xr_unmix.cli import main
scene, em, ro = sys.argv[1:4]
out = {}
r = CliRunner().invoke(main, ["run", scene, "--endmembers", em, "--out", ro + "/o.tif"])
out["run"] = [r.exit_code, r.output]
r = CliRunner().invoke(main, ["batch", scene, "--endmembers", em, "--out-dir", ro + "/../b",
                              "--report", ro + "/report.json", "--chunk", "16"])
out["batch"] = [r.exit_code, r.output]
print(json.dumps(out))
"""


def _drop_dac() -> None:
    """In the child: lose root's power to write where permissions say no (CAP_DAC_OVERRIDE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_cli_read_only_output_and_report(files) -> None:
    tmp, scene, em = files
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = subprocess.run([sys.executable, "-c", _READ_ONLY, str(scene), str(em), str(ro)],
                              env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                              text=True, timeout=120, check=False,
                              preexec_fn=_drop_dac if os.geteuid() == 0 else None)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.splitlines()[-1])
    code, out = res["run"]
    assert code == 2 and out.count("\n") == 1, out
    assert re.search(f"cannot write {re.escape(str(ro))}/o.tif: the folder .* is not writable", out)
    code, out = res["batch"]
    assert code == 2 and out.count("\n") == 1, out
    assert f"cannot write to the report's folder {ro}: it is not writable" in out
    assert list(ro.iterdir()) == []
