"""The command line's outputs: one computation for all products (run --quality, batch --format both),
and help for every option."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from xr_unmix import api
from xr_unmix.cli import main
from xr_unmix.endmembers import write_endmembers
from xr_unmix.io import open_abundance
from xr_unmix.testing import make_cube, write_cube_tif


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """A scene, its endmembers, and a list that grows by one per SUnSAL block evaluation."""
    cube, E, _ = make_cube(32, 32)
    scene = write_cube_tif(cube, tmp_path / "scene.tif")
    em = write_endmembers(E, tmp_path / "em.csv")
    calls: list[tuple[int, ...]] = []
    real = api._SunsalKernel.__call__

    def call(self, block):
        if block.size:
            calls.append(block.shape)
        return real(self, block)

    monkeypatch.setattr(api._SunsalKernel, "__call__", call)
    return tmp_path, scene, em, calls


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_run_quality_computes_the_estimator_once(counted, suffix):
    tmp, scene, em, calls = counted
    out = tmp / f"ab{suffix}"
    r = CliRunner().invoke(main, ["run", str(scene), "--endmembers", str(em), "--out", str(out),
                                  "--chunk", "16", "--quality"])
    assert r.exit_code == 0, r.output
    assert len(calls) == 4, calls  # 4 tiles of 16 px, each unmixed once for the map and its RMSE
    q = tmp / f"ab_rmse{suffix}"
    assert str(q) in r.output and open_abundance(q).shape[-2:] == (32, 32)


def test_batch_format_both_unmixes_once(counted):
    tmp, scene, em, calls = counted
    r = CliRunner().invoke(main, ["batch", str(scene), "--endmembers", str(em), "--out-dir",
                                  str(tmp / "out"), "--format", "both", "--chunk", "16"])
    assert r.exit_code == 0, r.output
    assert len(calls) == 4, calls
    a, b = open_abundance(tmp / "out" / "scene.tif"), open_abundance(tmp / "out" / "scene.zarr")
    assert (a.values == b.values).all()


@pytest.mark.parametrize("command", ["run", "train", "batch", "demo"])
def test_every_option_has_help(command):
    cmd = main.commands[command]
    missing = [p.name for p in cmd.params if getattr(p, "help", "x") in (None, "")
               and p.param_type_name == "option" and p.name not in ("method", "device")]
    assert not missing, f"{command}: options without help: {missing}"
    text = CliRunner().invoke(main, [command, "--help"]).output
    if command == "batch":
        assert "both" in text
