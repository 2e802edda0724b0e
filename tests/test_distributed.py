"""Runs on a LocalCluster of worker processes (loopback only): equal to threads, models once per
worker, and a worker killed mid-run loses nothing."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import dask
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import xr_unmix
from xr_unmix._workers import ModelKernel, clear_model_cache, model_cache_info
from xr_unmix.cli import main
from xr_unmix.cluster import active_client, dask_scheduler, describe_scheduler
from xr_unmix.io import open_abundance, to_zarr
from xr_unmix.testing import make_cube

pytestmark = pytest.mark.slow
_TRIM_AT_IMPORT = os.environ.get("MALLOC_TRIM_THRESHOLD_")

# helpers defined here travel to the workers by value (the workers need not import this file)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    with dask_scheduler(workers=2, threads_per_worker=1) as c:
        assert len(c.scheduler_info()["workers"]) == 2
        yield c
    assert active_client() is None


def _threads(fn):
    with dask.config.set(scheduler="threads"):
        return fn()


def test_accessor_on_cluster_equals_threads(client) -> None:
    cube, E, _ = make_cube(40, 48, seed=5, chunks={"y": 16, "x": 16})
    cube = cube.where(~((cube.x == cube.x[3]) & (cube.y == cube.y[2])))  # one invalid pixel
    ab = cube.unmix.fcls(E)
    threaded = _threads(lambda: ab.compute())
    assert describe_scheduler()["kind"] == "distributed"
    distributed = client.compute(ab).result()
    np.testing.assert_array_equal(np.isnan(distributed.values), np.isnan(threaded.values))
    np.testing.assert_allclose(distributed.values, threaded.values, rtol=0, atol=1e-6)
    assert distributed.rio.crs == cube.rio.crs


def test_cli_run_on_cluster_equals_threads(client, tmp_path: Path) -> None:
    cube, E, _ = make_cube(40, 48, seed=6)
    cube.rio.to_raster(tmp_path / "s.tif", tiled=True, blockxsize=16, blockysize=16)
    lines = ["wavelength," + ",".join(map(str, E.endmember.values))]
    lines += [f"{w}," + ",".join(repr(float(v)) for v in E.values[i])
              for i, w in enumerate(E.wavelength.values)]
    (tmp_path / "em.csv").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    args = ["run", str(tmp_path / "s.tif"), "--endmembers", str(tmp_path / "em.csv"),
            "--chunk", "16"]
    r1 = runner.invoke(main, [*args, "--out", str(tmp_path / "cl.tif"),
                              "--scheduler", client.scheduler.address])
    assert r1.exit_code == 0, r1.output
    r2 = _threads(lambda: runner.invoke(main, [*args, "--out", str(tmp_path / "th.tif")]))
    assert r2.exit_code == 0, r2.output
    with rasterio.open(tmp_path / "cl.tif") as a, rasterio.open(tmp_path / "th.tif") as b:
        np.testing.assert_allclose(a.read(), b.read(), atol=1e-6)
        assert a.crs == b.crs and a.descriptions == b.descriptions


def test_model_built_once_per_worker(client) -> None:
    from xr_unmix.models.uadmm import UADMMNet

    cube, E, _ = make_cube(48, 64, seed=7, chunks={"y": 8, "x": 16})  # 24 chunks
    model = UADMMNet.from_endmembers(E, layers=2)
    kernel = ModelKernel(model, "cpu", np.dtype("float32"))
    assert len(cloudpickle.dumps(kernel)) < 64_000  # state only: no pickled module
    client.run(clear_model_cache)
    ab = cube.unmix.admm(model)
    threaded = _threads(lambda: ab.compute())
    np.testing.assert_allclose(client.compute(ab).result().values, threaded.values, atol=1e-6)
    info = client.run(model_cache_info)
    builds = [i["builds"] for i in info.values()]
    assert sum(builds) >= 1 and max(builds) == 1, info  # 24 chunks, at most one build per worker
    assert len({i["pid"] for i in info.values()}) == 2
    # a second run of the same model: cache hits only
    client.compute(cube.unmix.admm(model)).result()
    assert [i["builds"] for i in client.run(model_cache_info).values()] == builds
    # changed weights: another hash, rebuilt
    import torch

    with torch.no_grad():
        next(model.parameters()).mul_(1.01)
    client.compute(cube.unmix.admm(model)).result()
    after = [i["builds"] for i in client.run(model_cache_info).values()]
    assert sum(after) > sum(builds)


def test_workers_limit_torch_threads(client) -> None:
    def threads() -> tuple[int, int]:
        import torch

        from xr_unmix._workers import torch_thread_count, torch_threads

        with torch_threads():
            return torch.get_num_threads(), torch_thread_count()

    for n, policy in client.run(threads).values():
        assert n == policy == 1  # 2 workers x 1 thread on this host: one torch thread each


def test_batch_on_cluster(client, tmp_path: Path) -> None:
    cube, E, _ = make_cube(24, 32, seed=9)
    cube.rio.to_raster(tmp_path / "s.tif")
    lines = ["wavelength," + ",".join(map(str, E.endmember.values))]
    lines += [f"{w}," + ",".join(repr(float(v)) for v in E.values[i])
              for i, w in enumerate(E.wavelength.values)]
    (tmp_path / "em.csv").write_text("\n".join(lines) + "\n")
    from xr_unmix.batch import run_batch

    rep = run_batch([str(tmp_path / "s.tif")], out_dir=tmp_path / "o", endmembers=str(
        tmp_path / "em.csv"), scheduler=client.scheduler.address, chunk=16, formats=["zarr"],
        progress=False)
    assert rep["scheduler"]["kind"] == "distributed" and rep["scheduler"]["workers"] == 2
    assert rep["parameters"]["in_flight"] == 2  # the cluster default
    assert [s["status"] for s in rep["scenes"]] == ["done"]
    expected = xr_unmix.fcls(cube, E).values
    np.testing.assert_allclose(open_abundance(tmp_path / "o" / "s.zarr").values, expected,
                               atol=1e-6)


def test_large_model_is_broadcast_not_inlined(client, monkeypatch: pytest.MonkeyPatch) -> None:
    import xr_unmix._workers as workers
    from xr_unmix.models.uadmm import UADMMNet

    monkeypatch.setattr(workers, "INLINE_MAX_BYTES", 0)  # every model counts as large
    cube, E, _ = make_cube(32, 32, seed=11, chunks={"y": 8, "x": 16})
    model = UADMMNet.from_endmembers(E, layers=3)
    kernel = ModelKernel(model, "cpu", np.dtype("float32"))
    state = kernel.__getstate__()
    assert state["payload"] is None and state["broadcast"] == kernel.key
    assert len(cloudpickle.dumps(kernel)) < 1000  # the key only
    client.run(clear_model_cache)
    ab = cube.unmix.admm(model)
    np.testing.assert_allclose(client.compute(ab).result().values,
                               _threads(lambda: ab.compute()).values, atol=1e-6)
    assert max(i["builds"] for i in client.run(model_cache_info).values()) == 1


def test_deq_solve_stats_and_warnings_reach_the_caller_from_workers(client) -> None:
    from xr_unmix.errors import ConvergenceWarning
    from xr_unmix.models.deq import DEQUnmix

    cube, E, _ = make_cube(32, 40, seed=15, chunks={"y": 16, "x": 20})
    m = DEQUnmix.from_endmembers(E, seed=0, hidden=4, kernel_size=1, max_iter=2, tol=1e-12)
    m.reset_solve_stats()
    with pytest.warns(ConvergenceWarning, match="stopped after 2 iterations"):
        threaded = _threads(lambda: cube.unmix.deq(m).compute())
    on_threads = dict(m.solve_stats)
    assert on_threads["n_solves"] == 4 and on_threads["n_unconverged"] == 4  # 4 tiles, none converged
    m.reset_solve_stats()
    ab = cube.unmix.deq(m)  # the kernel is made under the active client
    with pytest.warns(ConvergenceWarning, match="stopped after 2 iterations"):
        on_cluster = client.compute(ab).result()
    assert dict(m.solve_stats) == on_threads  # not zero, not left in the worker logs
    np.testing.assert_allclose(on_cluster.values, threaded.values, atol=1e-6)


def _run_state(state: dict, block: np.ndarray) -> np.ndarray:
    """On a worker: the kernel as a task would rebuild it from ``state``, applied to ``block``."""
    kernel = ModelKernel.__new__(ModelKernel)
    kernel.__setstate__(state)
    return kernel(block)


def test_tampered_payload_refused_on_worker_as_in_a_file(client) -> None:
    import hashlib

    import torch

    from xr_unmix.errors import ModelFileError
    from xr_unmix.models.uadmm import UADMMNet
    from xr_unmix.testing import tamper_model_bytes

    cube, E, _ = make_cube(8, 8, seed=12)
    block = cube.values
    state = ModelKernel(UADMMNet.from_endmembers(E), "cpu", np.dtype("float32")).__getstate__()
    assert isinstance(state["payload"], bytes)  # the model file's bytes, nothing else
    np.testing.assert_allclose(client.submit(_run_state, state, block, pure=False).result(),
                               xr_unmix.admm(cube, UADMMNet.from_endmembers(E)).values, atol=1e-6)
    name = next(k for k in UADMMNet.from_endmembers(E).state_dict() if k.startswith("W"))
    nan = tamper_model_bytes(state["payload"], tensors={name: lambda t: torch.full_like(t, np.nan)})
    # altered on the way: the hash no longer matches
    with pytest.raises(ModelFileError, match=r"worker payload \w+: its SHA-256 is \w+, not the"):
        client.submit(_run_state, {**state, "payload": nan}, block, pure=False).result()
    # altered with a matching hash: refused by the registry, with the words a file gets
    forged = {**state, "payload": nan, "key": hashlib.sha256(nan).hexdigest()}
    with pytest.raises(ModelFileError, match=f"tensor {name!r} holds .* NaN/inf values"):
        client.submit(_run_state, forged, block, pure=False).result()


def test_lost_broadcast_payload_is_a_bounded_error(client) -> None:
    from xr_unmix.errors import ModelFileError
    from xr_unmix.models.uadmm import UADMMNet

    cube, E, _ = make_cube(8, 8, seed=13)
    state = ModelKernel(UADMMNet.from_endmembers(E), "cpu", np.dtype("float32")).__getstate__()
    lost = {**state, "payload": None, "broadcast": "no-such-payload-key", "fetch_timeout": 1.0}
    t0 = time.monotonic()
    with pytest.raises(ModelFileError, match="broadcast model was not installed on this worker within 1 s"):
        client.submit(_run_state, lost, cube.values, pure=False).result(timeout=60)
    assert time.monotonic() - t0 < 30


async def _die() -> None:
    os._exit(1)


def _slow(block: np.ndarray) -> np.ndarray:
    time.sleep(0.15)
    return block


def test_broadcast_payload_after_a_worker_restart(client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker restarted after the broadcast fetches the model from the other one (bounded wait)."""
    import xr_unmix._workers as workers
    from xr_unmix.models.uadmm import UADMMNet

    monkeypatch.setattr(workers, "INLINE_MAX_BYTES", 0)
    cube, E, _ = make_cube(32, 32, seed=14, chunks={"y": 8, "x": 16})
    model = UADMMNet.from_endmembers(E, layers=3)
    ab = cube.unmix.admm(model)  # the kernel (and its broadcast) made once, for both runs
    expected = _threads(lambda: ab.compute()).values
    state = ModelKernel(model, "cpu", np.dtype("float32")).__getstate__()
    assert state["payload"] is None and state["broadcast"]
    np.testing.assert_allclose(client.compute(ab).result().values, expected, atol=1e-6)
    before = set(client.scheduler_info()["workers"])
    victim = min(before)
    client.run(_die, workers=[victim], wait=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = set(client.scheduler_info()["workers"])
        if victim not in now and len(now) == 2:
            break
        time.sleep(0.2)
    assert victim not in client.scheduler_info()["workers"], "the worker was not restarted"
    client.wait_for_workers(2, timeout=60)
    np.testing.assert_allclose(client.compute(ab).result(timeout=120).values, expected, atol=1e-6)
    new = next(w for w in client.scheduler_info()["workers"] if w != victim and w not in before)
    block = cube.values[:, :8, :8]
    got = client.submit(_run_state, state, block, workers=[new], pure=False).result(timeout=60)
    np.testing.assert_allclose(got, expected[:, :8, :8], atol=1e-6)
    assert client.run(model_cache_info, workers=[new])[new]["builds"] == 1


def test_worker_killed_mid_run_output_complete(client, tmp_path: Path) -> None:
    """Last in the module: it kills one of the shared cluster's workers (its nanny restarts it)."""
    cube, E, _ = make_cube(48, 64, seed=8, chunks={"y": 8, "x": 16})  # 24 chunks
    slow = cube.copy(data=cube.data.map_blocks(_slow, dtype=cube.dtype))
    ab = slow.unmix.fcls(E)
    expected = _threads(lambda: cube.unmix.fcls(E).compute())
    out = tmp_path / "a.zarr"
    c = client
    before = set(c.scheduler_info()["workers"])
    errors: list[BaseException] = []

    def write() -> None:
        try:
            to_zarr(ab, out)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=write)
    t.start()
    # wait until some chunks are written into the temporary store, then kill a worker process
    deadline = time.monotonic() + 60
    written = 0
    while time.monotonic() < deadline:
        parts = list(tmp_path.glob(".a.zarr.partial-*/abundance/c/**/*"))
        written = sum(p.is_file() for p in parts)
        if written >= 3:
            break
        time.sleep(0.02)
    victim = sorted(before)[0]
    c.run(_die, workers=[victim], wait=False)
    t.join(120)
    assert not t.is_alive() and not errors, errors
    assert 3 <= written < 24, "the kill must happen in the middle of the run"
    deadline = time.monotonic() + 30
    while victim in c.scheduler_info()["workers"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert victim not in c.scheduler_info()["workers"], "the worker was not killed"
    got = open_abundance(out)
    np.testing.assert_array_equal(np.isnan(got.values), np.isnan(expected.values))
    np.testing.assert_allclose(got.values, expected.values, rtol=0, atol=1e-6)
    assert not list(tmp_path.glob(".*"))


def test_cuda_without_gpu_is_a_clear_error() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from xr_unmix.models.uadmm import UADMMNet

    cube, E, _ = make_cube(8, 8)
    kernel = cloudpickle.loads(cloudpickle.dumps(
        ModelKernel(UADMMNet.from_endmembers(E), "cuda", np.dtype("float32"))))
    from xr_unmix.errors import DeviceError

    with pytest.raises(DeviceError, match="no CUDA GPU"):
        kernel(cube.values)


def test_workers_keep_glibc_malloc_thresholds(client) -> None:
    # distributed's nanny would set MALLOC_TRIM_THRESHOLD_=65536 (1.4-1.6x the CPU per FCLS run);
    # dask_scheduler starts its workers without it, and without leaking it into this process
    values = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert list(values.values()) == [_TRIM_AT_IMPORT] * 2  # None unless the user set it
    assert os.environ.get("MALLOC_TRIM_THRESHOLD_") == _TRIM_AT_IMPORT
    gdal = client.run(lambda: os.environ.get("GDAL_CACHEMAX"))
    assert set(gdal.values()) == {os.environ.get("GDAL_CACHEMAX") or "64"}


def _profiling(dask_worker) -> bool:
    return "profile" in dask_worker.periodic_callbacks


def test_workers_run_without_the_statistical_profiler(client) -> None:
    # the 10 ms stack sampler costs ~1 % of a core per idle worker, more while tasks run
    assert client.run(_profiling) == dict.fromkeys(client.scheduler_info()["workers"], False)
    with dask.config.set({"distributed.worker.profile.enabled": True}), \
            dask_scheduler(workers=1) as mine:
        assert list(mine.run(_profiling).values()) == [False]  # True is distributed's default
    with dask.config.set({"distributed.worker.profile.enabled": "yes"}), \
            dask_scheduler(workers=1) as mine:
        assert list(mine.run(_profiling).values()) == [True]  # a user's own value is kept


def _slow_write(path: str, i: int) -> int:
    import time as _time

    _time.sleep(1.0)
    with open(path, "a") as f:
        f.write(f"{i}\n")
    return i


def _fail_fast() -> int:
    raise RuntimeError("task failed on purpose")


def test_compute_settled_waits_for_running_tasks_when_one_fails(client, tmp_path) -> None:
    # one task fails at once while a slow one is running on the other worker: compute_settled must
    # return (raise) only after the slow task stopped, so nothing writes after the caller cleans up
    import time

    from dask import delayed

    from xr_unmix.runtime import compute_settled

    log = tmp_path / "writes.txt"
    log.touch()
    slow = [delayed(_slow_write, pure=False)(str(log), i) for i in range(2)]
    graph = delayed(lambda *xs: xs)(*slow, delayed(_fail_fast, pure=False)())
    with pytest.raises(RuntimeError, match="on purpose"):
        compute_settled(graph, settle_timeout=20)
    settled = log.read_text()
    time.sleep(1.5)  # longer than a slow task: anything still running would write now
    assert log.read_text() == settled


def test_bundles_on_cluster_equal_threads_and_numpy(client) -> None:
    """Bundle fractions and uncertainties: the same numbers on a cluster, threads and numpy."""
    from xr_unmix.testing import make_endmembers

    E = make_endmembers(30, 6, seed=3)
    lib = E.assign_coords({"class": ("endmember", ["a", "b", "c", "a", "b", "c"])})
    cube, _, _ = make_cube(20, 24, endmembers=E, seed=2)
    eager = cube.unmix.bundles(lib, n_mc=5, seed=11)
    lazy = cube.chunk({"y": 10, "x": 8}).unmix.bundles(lib, n_mc=5, seed=11)
    threaded = _threads(lambda: lazy.compute())
    distributed = client.compute(lazy).result()
    for v in ("fraction", "uncertainty"):
        np.testing.assert_array_equal(distributed[v].values, threaded[v].values)
        np.testing.assert_allclose(distributed[v].values, eager[v].values, rtol=0, atol=1e-9)


def _fail_one_block(block: np.ndarray, block_info=None) -> np.ndarray:
    if block_info[None]["chunk-location"][1:] == (1, 1):
        raise RuntimeError("block (1, 1) failed on purpose")
    time.sleep(0.05)
    return block


@pytest.mark.parametrize("fmt", ["zarr", "tif"])
def test_failed_task_on_cluster_leaves_no_output(client, tmp_path: Path, fmt: str) -> None:
    """A tile's task raises on a worker: the writer raises that error (in bounded time), and nothing
    at the output path, or beside it, looks like a product."""
    from xr_unmix.io import to_cog

    cube, E, _ = make_cube(32, 48, seed=12, chunks={"y": 8, "x": 16})
    bad = cube.copy(data=cube.data.map_blocks(_fail_one_block, dtype=cube.dtype))
    out = tmp_path / f"a.{fmt}"
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"block \(1, 1\) failed on purpose"):
        (to_zarr if fmt == "zarr" else to_cog)(bad.unmix.fcls(E), out)
    assert time.monotonic() - t0 < 60
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    time.sleep(0.5)  # nothing still running writes a chunk after the error
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _sleep_then(path: str, seconds: float) -> int:
    import time as _time

    _time.sleep(seconds)
    with open(path, "a") as f:
        f.write("late\n")
    return 0


def test_compute_settled_gives_up_waiting_after_settle_timeout(client, tmp_path: Path) -> None:
    """A task that runs on after a failure is waited for at most ``settle_timeout`` seconds."""
    from dask import delayed

    from xr_unmix.runtime import compute_settled

    log = tmp_path / "late.txt"
    graph = delayed(lambda *xs: xs)(delayed(_sleep_then, pure=False)(str(log), 4.0),
                                    delayed(_fail_fast, pure=False)())
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="on purpose"):
        compute_settled(graph, settle_timeout=1.0)
    waited = time.monotonic() - t0
    assert 0.9 <= waited < 3.5, waited  # waited for the running task, then gave up at the bound
    assert not log.exists()  # it was still running when compute_settled returned
    deadline = time.monotonic() + 10
    while not log.exists() and time.monotonic() < deadline:  # let it end before the next test
        time.sleep(0.1)


def test_batch_scene_failing_on_a_worker_leaves_nothing_that_looks_complete(client, tmp_path) -> None:
    """A scene whose tile fails to decode in a worker's task: recorded as failed, the batch goes on,
    and neither its outputs nor its sidecar exist (a re-run tries it again, it is not skipped)."""
    from xr_unmix.batch import run_batch
    from xr_unmix.endmembers import write_endmembers

    d = tmp_path / "scenes"
    d.mkdir()
    cube, E, _ = make_cube(32, 32, seed=13)
    for name in ("good", "bad"):
        cube.rio.to_raster(d / f"{name}.tif", tiled=True, blockxsize=16, blockysize=16,
                           compress="DEFLATE")
    with rasterio.open(d / "bad.tif") as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    with open(d / "bad.tif", "r+b") as f:  # one tile's bytes damaged: the read fails in a task
        f.seek(offset)
        f.write(b"\xff" * 64)
    em = write_endmembers(E, tmp_path / "em.csv")
    out = tmp_path / "o"
    kw = dict(out_dir=out, endmembers=str(em), scheduler=client.scheduler.address, chunk=16,
              formats=["tif", "zarr"], progress=False)
    rep = run_batch([str(d / "good.tif"), str(d / "bad.tif")], **kw)
    status = {Path(s["scene"]).name: s for s in rep["scenes"]}
    assert status["good.tif"]["status"] == "done" and status["bad.tif"]["status"] == "failed"
    # (on threads the writer names the file in its error; here the worker's error arrives as it is)
    assert "Read failed" in status["bad.tif"]["error"]
    assert sorted(p.name for p in out.iterdir()) == [
        "good.done.json", "good.tif", "good.zarr", "xr_unmix_batch_report.json"]
    again = run_batch([str(d / "good.tif"), str(d / "bad.tif")], **kw)
    assert [s["status"] for s in again["scenes"]] == ["skipped", "failed"]


def test_batch_scenes_in_flight_equal_one_after_another(client, tmp_path: Path) -> None:
    """``in_flight=3``: the same outputs as scenes one after another, the report in the scenes' order,
    a failing scene isolated, and resume skips the complete ones."""
    from xr_unmix.batch import run_batch
    from xr_unmix.endmembers import write_endmembers

    d = tmp_path / "scenes"
    d.mkdir()
    E = None
    for i, name in enumerate("abcd"):
        cube, E, _ = make_cube(24 + 8 * i, 32, seed=20 + i)
        cube.rio.to_raster(d / f"{name}.tif", tiled=True, blockxsize=16, blockysize=16)
    (d / "c.tif").write_bytes(b"II*\x00" + os.urandom(600))  # corrupt: fails, the others go on
    em = write_endmembers(E, tmp_path / "em.csv")
    kw = dict(endmembers=str(em), scheduler=client.scheduler.address, chunk=16, formats=["tif", "zarr"],
              progress=False)
    names = [str(d / f"{n}.tif") for n in "abcd"]
    seq = run_batch(names, out_dir=tmp_path / "seq", **kw)
    par = run_batch(names, out_dir=tmp_path / "par", in_flight=3, **kw)
    assert [Path(s["scene"]).name for s in par["scenes"]] == ["a.tif", "b.tif", "c.tif", "d.tif"]
    assert [s["status"] for s in par["scenes"]] == ["done", "done", "failed", "done"]
    assert par["parameters"]["in_flight"] == 3 and par["summary"]["done"] == 3
    for n in "abd":
        for ext in ("tif", "zarr"):
            a = open_abundance(tmp_path / "seq" / f"{n}.{ext}").values
            b = open_abundance(tmp_path / "par" / f"{n}.{ext}").values
            np.testing.assert_array_equal(a, b)
        assert (tmp_path / "par" / f"{n}.done.json").exists()
    assert not (tmp_path / "par" / "c.done.json").exists()
    assert seq["summary"] == par["summary"]
    again = run_batch(names, out_dir=tmp_path / "par", in_flight=3, **kw)  # resume works the same
    assert [s["status"] for s in again["scenes"]] == ["skipped", "skipped", "failed", "skipped"]


def _scene_files(tmp_path: Path, names: str, seed: int) -> tuple[Path, Path]:
    """GeoTIFF scenes ``<name>.tif`` (one per letter of ``names``) and their endmember CSV."""
    from xr_unmix.endmembers import write_endmembers

    d = tmp_path / "scenes"
    d.mkdir()
    cube, E, _ = make_cube(24, 32, seed=seed)
    for n in names:
        cube.rio.to_raster(d / f"{n}.tif")
    return d, write_endmembers(E, tmp_path / "em.csv")


def test_batch_in_flight_runs_scenes_at_the_same_time(client, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two scenes in flight meet at a barrier inside their runs: one after another, they could not."""
    from xr_unmix import batch as batch_mod

    d, em = _scene_files(tmp_path, "ab", seed=30)
    barrier = threading.Barrier(2, timeout=60)
    original = batch_mod._run_scene

    def meet(*args, **kwargs):
        barrier.wait()  # BrokenBarrierError (scene failed) if the other scene is not running
        return original(*args, **kwargs)

    monkeypatch.setattr(batch_mod, "_run_scene", meet)
    rep = batch_mod.run_batch([str(d / "a.tif"), str(d / "b.tif")], out_dir=tmp_path / "o",
                              endmembers=str(em), scheduler=client.scheduler.address, chunk=16,
                              formats=["zarr"], progress=False, in_flight=2)
    assert [s["status"] for s in rep["scenes"]] == ["done", "done"], rep["scenes"]


def test_batch_in_flight_interrupted(client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while scenes are in flight: the batch stops within its polling interval, the scenes not
    started never start, the report says interrupted (no "running" entry is left), nothing looks
    complete, and a re-run resumes."""
    import _thread

    from xr_unmix import batch as batch_mod

    d, em = _scene_files(tmp_path, "abcd", seed=31)
    original = batch_mod._run_scene
    started: list[str] = []

    def ctrl_c_in_b(scene, *args, **kwargs):
        started.append(scene.name)
        if scene.name == "b.tif":
            _thread.interrupt_main()  # as a Ctrl-C: KeyboardInterrupt in the main thread
        time.sleep(3.0)  # both scenes still running when the main thread sees it
        return original(scene, *args, **kwargs)

    monkeypatch.setattr(batch_mod, "_run_scene", ctrl_c_in_b)
    names = [str(d / f"{n}.tif") for n in "abcd"]
    kw = dict(out_dir=tmp_path / "o", endmembers=str(em), scheduler=client.scheduler.address, chunk=16,
              formats=["zarr"], progress=False)
    # interrupt_main runs the SIGINT handler: Python's own, whatever an earlier test installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            batch_mod.run_batch(names, in_flight=2, **kw)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - t0 < 3.0  # did not wait for the running scenes
    report = json.loads((tmp_path / "o" / batch_mod.REPORT_NAME).read_text())
    status = {Path(s["scene"]).name: s["status"] for s in report["scenes"]}
    assert status == {"a.tif": "interrupted", "b.tif": "interrupted"}, status
    # the two running scenes end in their threads: on the batch's own cluster they fail when it is
    # closed; here the module's client stays up, so they may finish: either way the report agrees
    # with the files, and c and d never start
    time.sleep(5.0)
    assert sorted(started) == ["a.tif", "b.tif"]
    report = json.loads((tmp_path / "o" / batch_mod.REPORT_NAME).read_text())
    final = {Path(s["scene"]).name: s["status"] for s in report["scenes"]}
    assert set(final) == {"a.tif", "b.tif"} and set(final.values()) <= {"done", "interrupted"}, final
    for n, st in final.items():
        assert (tmp_path / "o" / n.replace(".tif", ".done.json")).exists() == (st == "done")
    monkeypatch.undo()
    again = batch_mod.run_batch(names, in_flight=2, **kw)
    assert [s["status"] for s in again["scenes"]] == [
        "skipped" if final.get(n + ".tif") == "done" else "done" for n in "abcd"]
