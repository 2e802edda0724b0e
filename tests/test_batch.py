"""Batch runs: expansion of inputs, one output per scene, JSON report, failures isolated, resume."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
from click.testing import CliRunner

import xr_unmix
from xr_unmix import batch as batch_mod
from xr_unmix.batch import expand_scenes, output_stems, run_batch
from xr_unmix.cli import main
from xr_unmix.io import open_abundance, open_cube
from xr_unmix.testing import make_cube


def _write_csv(E: xr.DataArray, path: Path) -> Path:
    lines = ["wavelength," + ",".join(map(str, E.endmember.values))]
    for i, w in enumerate(E.wavelength.values):
        lines.append(f"{w}," + ",".join(repr(float(v)) for v in E.values[i]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def scenes(tmp_path: Path) -> dict[str, Path]:
    """Three small GeoTIFF scenes (a, b, c), a corrupt one, and an endmember CSV."""
    d = tmp_path / "scenes"
    d.mkdir()
    E = None
    for i, name in enumerate("abc"):
        cube, E, _ = make_cube(24 + 8 * i, 32, seed=i)
        cube.rio.to_raster(d / f"{name}.tif", tiled=True, blockxsize=16, blockysize=16)
    (d / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(600))
    assert E is not None
    return {"dir": d, "em": _write_csv(E, tmp_path / "em.csv"), "out": tmp_path / "out"}


def _statuses(report: dict) -> dict[str, str]:
    return {Path(s["scene"]).name: s["status"] for s in report["scenes"]}


def test_expand_globs_lists_and_duplicates(tmp_path: Path, scenes) -> None:
    d = scenes["dir"]
    lst = tmp_path / "list.txt"
    lst.write_text(f"# scenes\n{d / 'b.tif'}\n\nscenes/a.tif\n{d / 'nothing*.tif'}\n")
    paths, unmatched = expand_scenes([str(d / "[ab].tif"), f"@{lst}", str(d / "c.tif"),
                                      "@" + str(tmp_path / "missing.txt")])
    assert [p.name for p in paths] == ["a.tif", "b.tif", "c.tif"]
    assert unmatched == [str(d / "nothing*.tif"), "@" + str(tmp_path / "missing.txt")]
    # stems: unique and stable
    other = tmp_path / "x" / "a.tif"
    stems = output_stems([d / "a.tif", other, d / "b.tif"])
    assert stems[2] == "b" and stems[0] != stems[1] and stems[0].startswith("a__")
    assert stems == output_stems([d / "a.tif", other, d / "b.tif"])


def test_batch_outputs_report_failure_and_resume(scenes) -> None:
    d, out = scenes["dir"], scenes["out"]
    report = run_batch([str(d / "*.tif")], out_dir=out, method="fcls", endmembers=str(scenes["em"]),
                       formats=["tif", "zarr"], chunk=16, progress=False)
    assert _statuses(report) == {"a.tif": "done", "b.tif": "done", "c.tif": "done",
                                 "corrupt.tif": "failed"}
    bad = next(s for s in report["scenes"] if s["status"] == "failed")
    assert "corrupt.tif" in bad["error"] and "cannot open" in bad["error"]
    assert report["summary"] == {"done": 3, "skipped": 0, "failed": 1, "total": 4}

    # the report on disk: inputs, parameters, versions, per-scene timings
    on_disk = json.loads(Path(report["report_path"]).read_text())
    assert on_disk["inputs"]["specs"] == [str(d / "*.tif")]
    assert len(on_disk["inputs"]["scenes"]) == 4
    assert on_disk["parameters"]["method"] == "fcls"
    assert on_disk["parameters"]["formats"] == ["tif", "zarr"]
    assert {"xr_unmix", "dask", "torch", "rasterio", "gdal"} <= set(on_disk["versions"])
    assert on_disk["scheduler"]["kind"] == "threads"
    for s in on_disk["scenes"]:
        assert s["seconds"] is not None and s["seconds"] >= 0
    assert on_disk["finished"] is not None

    # every output equals the direct unmixing of its scene
    from xr_unmix.endmembers import read_endmembers

    E = read_endmembers(scenes["em"])
    for name in "abc":
        expected = xr_unmix.fcls(open_cube(d / f"{name}.tif"), E).values
        np.testing.assert_allclose(open_cube(out / f"{name}.tif").values, expected, atol=1e-6)
        z = open_abundance(out / f"{name}.zarr")
        np.testing.assert_allclose(z.values, expected, atol=1e-6)
        assert z.rio.crs == open_cube(d / f"{name}.tif").rio.crs
    assert not (out / "corrupt.tif").exists() and not (out / "corrupt.done.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # re-run: complete scenes are skipped (outputs untouched), the corrupt one fails again
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")}
    again = run_batch([str(d / "*.tif")], out_dir=out, method="fcls", endmembers=str(scenes["em"]),
                      formats=["tif", "zarr"], chunk=16, progress=False)
    assert _statuses(again) == {"a.tif": "skipped", "b.tif": "skipped", "c.tif": "skipped",
                                "corrupt.tif": "failed"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tif")} == mtimes

    # other parameters make the outputs outdated: recomputed, not skipped
    third = run_batch([str(d / "a.tif")], out_dir=out, method="nnls", endmembers=str(scenes["em"]),
                      formats=["tif", "zarr"], chunk=16, progress=False)
    assert _statuses(third) == {"a.tif": "done"}


def test_incomplete_outputs_are_redone(scenes) -> None:
    d, out = scenes["dir"], scenes["out"]
    kw = dict(out_dir=out, method="fcls", endmembers=str(scenes["em"]), formats=["tif"], chunk=16,
              progress=False)
    run_batch([str(d / "a.tif"), str(d / "b.tif")], **kw)
    # a truncated output (e.g. copied by hand) and a lost sidecar: neither counts as complete
    data = (out / "a.tif").read_bytes()
    (out / "a.tif").write_bytes(data[: len(data) // 2])
    (out / "b.done.json").unlink()
    again = run_batch([str(d / "a.tif"), str(d / "b.tif")], **kw)
    assert _statuses(again) == {"a.tif": "done", "b.tif": "done"}
    with rasterio.open(out / "a.tif") as src:
        assert np.isfinite(src.read()).all()


def _interrupting(real):
    """An xr_unmix.io.write that is interrupted (KeyboardInterrupt) in the middle of scene b's write."""

    def stop(block, block_info=None):
        if block_info[None]["chunk-location"][1:] == (0, 1):
            raise KeyboardInterrupt
        return block

    def write(ab, **kw):
        if Path(kw.get("cog") or kw["zarr"]).stem == "b":
            ab = ab.copy(data=ab.data.map_blocks(stop, dtype=ab.dtype))
        return real(ab, **kw)

    return write


def test_interrupted_batch_resumes(scenes, monkeypatch: pytest.MonkeyPatch) -> None:
    d, out = scenes["dir"], scenes["out"]
    kw = dict(out_dir=out, method="fcls", endmembers=str(scenes["em"]), formats=["tif"], chunk=16,
              progress=False)
    names = [str(d / f"{n}.tif") for n in "abc"]
    monkeypatch.setattr(batch_mod, "write", _interrupting(batch_mod.write))
    with pytest.raises(KeyboardInterrupt):
        run_batch(names, **kw)
    monkeypatch.undo()
    report = json.loads((out / batch_mod.REPORT_NAME).read_text())
    assert _statuses(report) == {"a.tif": "done", "b.tif": "interrupted"}
    assert (out / "a.tif").exists() and not (out / "b.tif").exists()
    assert sorted(p.name for p in out.iterdir()) == ["a.done.json", "a.tif", batch_mod.REPORT_NAME]

    resumed = run_batch(names, **kw)
    assert _statuses(resumed) == {"a.tif": "skipped", "b.tif": "done", "c.tif": "done"}


def test_bad_parameters_fail_before_any_scene(scenes) -> None:
    out = scenes["out"]
    with pytest.raises(ValueError, match="needs endmembers"):
        run_batch([str(scenes["dir"] / "a.tif")], out_dir=out, method="fcls")
    with pytest.raises(ValueError, match="formats"):
        run_batch([str(scenes["dir"] / "a.tif")], out_dir=out, endmembers=str(scenes["em"]),
                  formats=["png"])
    with pytest.raises(ValueError, match="needs a trained model"):
        run_batch([str(scenes["dir"] / "a.tif")], out_dir=out, method="admm")
    assert not out.exists() or not any(out.iterdir())


def test_cli_batch_exit_codes(scenes, tmp_path: Path) -> None:
    d = scenes["dir"]
    lst = tmp_path / "good.txt"
    lst.write_text(f"{d / 'a.tif'}\n{d / 'b.tif'}\n")
    runner = CliRunner()
    ok = runner.invoke(main, ["batch", f"@{lst}", "--endmembers", str(scenes["em"]),
                              "--out-dir", str(tmp_path / "o1"), "--chunk", "16"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o1" / "a.tif").exists() and (tmp_path / "o1" / "b.tif").exists()
    bad = runner.invoke(main, ["batch", str(d / "*.tif"), "--endmembers", str(scenes["em"]),
                               "--out-dir", str(tmp_path / "o2"), "--chunk", "16",
                               "--format", "zarr"])
    assert bad.exit_code == 1
    assert "1 scene(s) failed" in bad.output
    assert open_abundance(tmp_path / "o2" / "c.zarr").sizes == {"endmember": 3, "y": 40, "x": 32}


def test_cli_batch_rejects_bad_parameters(scenes, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["batch", str(scenes["dir"] / "a.tif"), "--out-dir",
                                  str(tmp_path / "o")])
    assert r.exit_code == 2 and "--endmembers: method 'fcls' needs endmembers" in r.output
    r = CliRunner().invoke(main, ["batch", str(scenes["dir"] / "a.tif"), "--endmembers",
                                  str(scenes["em"]), "--out-dir", str(tmp_path / "o"),
                                  "--format", "png"])
    assert r.exit_code == 2 and "formats must be among" in r.output


@pytest.mark.parametrize("spec", ["s3://bucket/scenes/*.tif", "/vsizip/scenes.zip/*.tif",
                                  'NETCDF:"f.nc":reflectance', "https://host/a.tif"])
def test_remote_specs_are_refused_up_front(scenes, tmp_path: Path, spec: str) -> None:
    out = tmp_path / "o"
    with pytest.raises(xr_unmix.errors.InputError, match="cannot be globbed"):
        run_batch([str(scenes["dir"] / "a.tif"), spec], out_dir=out, endmembers=str(scenes["em"]))
    assert not out.exists()  # nothing started: no folder, no report
    lst = tmp_path / "list.txt"
    lst.write_text(f"{scenes['dir'] / 'a.tif'}\n{spec}\n")
    with pytest.raises(xr_unmix.errors.InputError, match=r"^scene .*a batch takes local files"):
        expand_scenes([f"@{lst}"])
    r = CliRunner().invoke(main, ["batch", spec, "--endmembers", str(scenes["em"]),
                                  "--out-dir", str(out)])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"Error: scene {spec}: a GDAL/fsspec path") and \
        r.output.count("\n") == 1, r.output
    assert not out.exists()


def _saved_models(E: xr.DataArray, tmp_path: Path) -> dict[str, Path]:
    """Untrained U-ADMM and DEQ models for ``E``, saved as model files."""
    from xr_unmix.models.deq import DEQUnmix
    from xr_unmix.models.uadmm import UADMMNet

    return {"admm": UADMMNet.from_endmembers(E).save(tmp_path / "admm.safetensors"),
            "deq": DEQUnmix.from_endmembers(E, seed=0).save(tmp_path / "deq.safetensors")}


@pytest.mark.parametrize("method", ["admm", "deq"])
def test_batch_with_model_files(scenes, tmp_path: Path, method: str) -> None:
    from xr_unmix.endmembers import read_endmembers
    from xr_unmix.models.base import load_model

    d, out = scenes["dir"], scenes["out"]
    path = _saved_models(read_endmembers(scenes["em"]), tmp_path)[method]
    kw = dict(out_dir=out, method=method, model=str(path), formats=["tif"], chunk=16,
              progress=False)
    report = run_batch([str(d / "a.tif"), str(d / "b.tif")], **kw)
    assert _statuses(report) == {"a.tif": "done", "b.tif": "done"}
    net = load_model(path)
    for name in "ab":
        expected = getattr(xr_unmix, method)(open_cube(d / f"{name}.tif", chunks=16), net).values
        np.testing.assert_allclose(open_cube(out / f"{name}.tif").values, expected, atol=1e-5)
    assert _statuses(run_batch([str(d / "a.tif")], **kw)) == {"a.tif": "skipped"}
    # another model file (same class, other weights) makes the outputs outdated
    (tmp_path / "other").mkdir()
    other = _saved_models(read_endmembers(scenes["em"]) * 1.01, tmp_path / "other")[method]
    path.write_bytes(other.read_bytes())
    assert _statuses(run_batch([str(d / "a.tif")], **kw)) == {"a.tif": "done"}


def test_batch_with_vca_endmembers(scenes) -> None:
    from xr_unmix.extraction import extract_endmembers

    d, out = scenes["dir"], scenes["out"]
    kw = dict(out_dir=out, method="fcls", endmembers="vca:3", seed=0, formats=["zarr"], chunk=16,
              progress=False)
    report = run_batch([str(d / "a.tif"), str(d / "b.tif")], **kw)
    assert _statuses(report) == {"a.tif": "done", "b.tif": "done"}
    for name in "ab":  # extracted per scene, with the batch's seed
        cube = open_cube(d / f"{name}.tif", chunks=16)
        expected = xr_unmix.fcls(cube, extract_endmembers(cube, 3, seed=0))
        got = open_abundance(out / f"{name}.zarr")
        assert got.sizes["endmember"] == 3
        np.testing.assert_allclose(got.values, expected.values, atol=1e-6)
    assert report["parameters"]["endmembers"] == "vca:3"
    sidecar = json.loads((out / "a.done.json").read_text())
    assert sidecar["fingerprint"]["endmembers_sha256"] is None
    assert sidecar["fingerprint"]["seed"] == 0
    assert _statuses(run_batch([str(d / "a.tif")], **kw)) == {"a.tif": "skipped"}
    # another seed: other endmembers, so the scene is redone
    assert _statuses(run_batch([str(d / "a.tif")], **{**kw, "seed": 1})) == {"a.tif": "done"}


def test_batch_bar_is_emptied_in_a_notebook(scenes, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """In Jupyter the scenes' bar is a widget shown under a display id, emptied at the end: a saved
    notebook keeps neither the widget nor text-bar lines."""
    import IPython.display
    import tqdm.auto
    import tqdm.notebook

    shown: list[tuple[object, dict]] = []

    class Handle:
        def update(self, obj: object, **kw: object) -> None:
            shown.append((obj, kw))

    def display(obj: object, **kw: object) -> Handle:
        shown.append((obj, kw))
        return Handle()

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm)
    monkeypatch.setattr(IPython.display, "display", display)
    report = run_batch([str(scenes["dir"] / "a.tif")], out_dir=scenes["out"], method="fcls",
                       endmembers=str(scenes["em"]), chunk=16, progress=True)
    assert _statuses(report) == {"a.tif": "done"}
    assert len(shown) == 2, shown
    assert isinstance(shown[0][0], tqdm.notebook.TqdmHBox) and shown[0][1] == {"display_id": True}
    assert shown[1] == ({}, {"raw": True})  # the display emptied when the batch ended
    err = capsys.readouterr().err
    assert "%|" not in err and "\r" not in err, err


def test_in_flight_checked_before_any_scene_runs(scenes) -> None:
    """``in_flight`` < 1, or > 1 on local threads: a ParameterError naming it, and no output written;
    the CLI says it in one line with exit status 2."""
    from xr_unmix.errors import ParameterError

    d, out = scenes["dir"], scenes["out"]
    kw = dict(out_dir=out, method="fcls", endmembers=str(scenes["em"]), chunk=16, progress=False)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ParameterError, match="in_flight must be an integer >= 1"):
            run_batch([str(d / "a.tif")], in_flight=bad, **kw)
    with pytest.raises(ParameterError, match="in_flight=2 needs a distributed scheduler"):
        run_batch([str(d / "a.tif"), str(d / "b.tif")], in_flight=2, **kw)
    assert not list(out.glob("*.tif")) and not list(out.glob("*.done.json"))
    assert run_batch([str(d / "a.tif")], **kw)["parameters"]["in_flight"] == 1  # threads' default
    r = CliRunner().invoke(main, ["batch", str(d / "a.tif"), "--endmembers", str(scenes["em"]),
                                  "--out-dir", str(out), "--in-flight", "0"])
    assert r.exit_code == 2 and "--in-flight" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["batch", str(d / "a.tif"), "--endmembers", str(scenes["em"]),
                                  "--out-dir", str(out), "--in-flight", "2"])
    assert r.exit_code == 2 and "needs a distributed scheduler" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
