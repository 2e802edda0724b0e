"""Batch runs: many scenes, one abundance map (COG and/or Zarr) per scene, resumable, with a JSON report.

:func:`run_batch` expands paths, globs and ``@list.txt`` files into scenes, unmixes them one after the
other on the chosen Dask scheduler (each scene is itself parallel over its tiles), and writes for every
scene ``OUT_DIR/<stem>.tif`` and/or ``OUT_DIR/<stem>.zarr`` plus a small sidecar
``OUT_DIR/<stem>.done.json`` once all of the scene's outputs are in place. A scene counts as complete
when its sidecar records the same inputs and parameters and every output it lists opens; a re-run skips
complete scenes (resume) and recomputes the others. A scene that fails (unreadable file, band mismatch,
an error while computing) is recorded with its error and the batch goes on. The writers are atomic
(temporary sibling, rename on success), so an interrupted scene leaves no output that looks complete.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from . import pipeline
from ._batch_report import Report, now, versions  # noqa: F401  (versions: part of this module's API)
from ._progress import progress_bar
from ._scenes import expand_scenes, output_stems, scene_fingerprint
from .errors import MissingInputError, OutputError, ParameterError
from .io import atomic as _atomic
from .io import open_abundance, write, zarr_complete
from .runtime import dashboard_line, dask_scheduler, describe_scheduler

PathLike = str | os.PathLike[str]

FORMATS = ("tif", "zarr")
#: scenes in flight on a cluster by default: batches of 12 1024² x 100-band scenes (COG + Zarr) on a warm
#: 2-worker LocalCluster took 8.74 / 8.25 s with 1, 7.54 / 7.49 s with 2 and 7.74 / 7.41 s with 4 (two
#: alternated rounds, quiet machine; docs/batch.md)
CLUSTER_IN_FLIGHT = 2
REPORT_NAME = "xr_unmix_batch_report.json"
_SIDECAR = ".done.json"


# -- completeness ----------------------------------------------------------------------------------

def output_readable(path: Path, n_layers: int | None = None) -> bool:
    """True if ``path`` (a ``.tif`` or ``.zarr`` written by xr_unmix) opens and has ``n_layers`` layers.

    A GeoTIFF must read its last tile (a truncated file fails there); a Zarr store must hold every
    chunk of every array (:func:`xr_unmix.io.zarr_complete`): a deleted chunk would otherwise read as
    NaN, a map that looks complete.
    """
    try:
        if path.suffix == ".tif":
            import rasterio

            with rasterio.open(path) as src:
                ok = src.count >= 1 and (n_layers is None or src.count == n_layers)
                if ok:  # touch the last tile: a truncated file fails here
                    src.read(src.count, window=((src.height - 1, src.height), (src.width - 1, src.width)))
                return bool(ok)
        da = open_abundance(path)
        return (n_layers is None or int(da.shape[0]) == n_layers) and zarr_complete(path)
    except Exception:  # noqa: BLE001  (unreadable for whatever reason: not complete)
        return False


def _is_complete(sidecar: Path, fingerprint: dict[str, Any], outputs: dict[str, Path]) -> bool:
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("fingerprint") != fingerprint:
        return False
    n = meta.get("n_endmembers")
    return all(output_readable(p, n) for p in outputs.values())


# -- the batch -------------------------------------------------------------------------------------

def run_batch(
    scenes: Sequence[PathLike],
    *,
    out_dir: PathLike,
    method: str = "fcls",
    endmembers: str | None = None,
    model: str | None = None,
    formats: Sequence[str] = ("tif",),
    scheduler: str | None = None,
    workers: int | None = None,
    device: str = "cpu",
    chunk: int | str = "auto",
    resample: bool = False,
    lam: float = 0.0,
    seed: int | None = None,
    overwrite: bool = False,
    report_path: PathLike | None = None,
    progress: bool | None = None,
    in_flight: int | None = None,
) -> dict[str, Any]:
    """Unmix many scenes, one output per scene and format; resume, and report per scene.

    Parameters
    ----------
    scenes : sequence of str or path
        Paths, glob patterns and ``@list.txt`` files (see :func:`expand_scenes`); local files only.
    out_dir : str or path
        Output directory (created). Gets ``<stem>.tif`` / ``<stem>.zarr`` per scene, a
        ``<stem>.done.json`` sidecar per completed scene, and the run report.
    method : {"sunsal", "fcls", "nnls", "ls", "admm", "deq"}
    endmembers : str, optional
        CSV / ENVI file, or ``vca:N`` (extracted per scene). Needed by every method but admm/deq.
    model : str, optional
        Trained model file (admm, deq). Shipped once per worker process, not per tile.
    formats : sequence of {"tif", "zarr", "both"}
        Outputs per scene (COG and/or Zarr v3; ``"both"`` is ``("tif", "zarr")``). The scene is
        unmixed once whatever the formats (:func:`xr_unmix.io.write`).
    scheduler, workers
        A running Dask scheduler's address, or a number of worker processes for a LocalCluster started
        for the batch (its dashboard link is printed on stderr, one line); neither: the active
        ``distributed.Client`` if any, else local threads.
    device : {"cpu", "cuda"}
    chunk : int or "auto"
        Spatial tile size in pixels; ``"auto"`` sizes tiles to ~64 MB of input whatever the band count
        (256 px for 200 float32 bands), which is what keeps memory bounded.
    resample : bool
        Resample the endmembers onto each cube's wavelengths.
    lam : float
        SUnSAL l1 weight (method ``sunsal``).
    seed : int, optional
        Seed for ``vca:N``.
    overwrite : bool
        Recompute every scene even if complete.
    report_path : str or path, optional
        Where to write the JSON report (default ``OUT_DIR/xr_unmix_batch_report.json``). It is rewritten
        after every scene, so an interrupted batch leaves the state it reached.
    progress : bool, optional
        Show a progress bar over the batch's scenes (``None``: only on a terminal). In Jupyter the bar
        is a widget that is emptied when the batch ends (:mod:`xr_unmix._progress`).
    in_flight : int, optional
        Scenes unmixed at the same time on a ``distributed`` cluster (each scene is still parallel over
        its tiles). With 1 the scenes run one after another, and the client's serial work per scene
        (opening it, building its graph, making the COG from the workers' parts) leaves the workers
        idle; more scenes in flight fill those gaps and keep a cluster with more cores than one scene
        has tiles busy. Default (``None``): :data:`CLUSTER_IN_FLIGHT` on a cluster, 1 on local threads.
        Local threads take 1 only: scenes in flight there would each start their own thread pool on the
        same cores.

    Returns
    -------
    dict
        The report: ``inputs``, ``parameters``, ``versions``, ``scheduler``, ``scenes`` (each with
        ``scene``, ``outputs``, ``status`` in ``{"done", "skipped", "failed"}``, ``seconds``,
        ``pixels``, ``error``), ``summary`` counts, and ``report_path``.

    Raises
    ------
    ParameterError, MissingInputError, DeviceError
        Bad parameters (unknown format or method, a method without the endmembers/model it needs, a
        negative ``lam``, ``cuda`` without a GPU, ``in_flight`` < 1 or > 1 on local threads): checked
        before any scene runs.
    InputError
        A scene spec is a GDAL / fsspec path, which a batch cannot glob (checked before any scene runs).
    OutputError
        The output folder or the report's folder is not writable.
    """
    fmts = _formats(formats)
    if in_flight is not None and (isinstance(in_flight, bool)
                                  or not isinstance(in_flight, numbers.Integral) or in_flight < 1):
        raise ParameterError(f"in_flight must be an integer >= 1, got {in_flight!r}").about("in_flight")
    if chunk != "auto":
        chunk = pipeline.parse_chunk(chunk)
    pipeline.check_request(method, endmembers=endmembers, model=model, lam=lam, device=device,
                           local=scheduler is None)
    paths, unmatched = expand_scenes(scenes)
    out, rpath = _output_folder(out_dir, report_path)
    params = {"method": method, "endmembers": endmembers, "model": model, "formats": fmts,
              "device": device, "chunk": chunk if chunk == "auto" else int(chunk),
              "resample": bool(resample), "lam": float(lam), "seed": seed,
              "overwrite": bool(overwrite), "in_flight": in_flight}
    report = Report(rpath, scenes, paths, unmatched, params, out)
    t_batch = time.perf_counter()
    with dask_scheduler(scheduler, workers) as client:
        if in_flight is None:
            in_flight = 1 if client is None else CLUSTER_IN_FLIGHT
        in_flight = params["in_flight"] = int(in_flight)
        if in_flight > 1 and client is None:
            raise ParameterError(
                f"in_flight={in_flight} needs a distributed scheduler (--workers N or --scheduler ADDRESS); "
                "on local threads each scene in flight would start its own thread pool on the same cores"
            ).about("in_flight")
        report.data["scheduler"] = describe_scheduler(client)
        if workers:
            print(dashboard_line(client), file=sys.stderr)
        bar = progress_bar(total=len(paths), unit="scene", desc="xr-unmix batch",
                           disable=None if progress is None else not progress, dynamic_ncols=True)
        jobs = [(scene, stem) for scene, stem in zip(paths, output_stems(paths), strict=True)]
        try:
            if in_flight == 1:
                for scene, stem in jobs:
                    _run_entry(report, bar, scene, stem, out, fmts, params, local=scheduler is None)
            else:
                _run_in_flight(report, bar, jobs, out, fmts, params, in_flight, local=scheduler is None)
        finally:
            bar.close()
            report.order(paths)
            report.data["finished"] = now()
            report.data["seconds"] = round(time.perf_counter() - t_batch, 3)
            report.save()
    return report.data


def _formats(formats: str | Sequence[str]) -> list[str]:
    """The output formats, ``tif`` and/or ``zarr`` (``both``, ``tiff`` and ``cog`` spelt out)."""
    fmts = [str(f).lower().lstrip(".") for f in ([formats] if isinstance(formats, str) else formats)]
    fmts = [g for f in fmts
            for g in (FORMATS if f == "both" else ["tif" if f in ("tiff", "cog") else f])]
    if not fmts or any(f not in FORMATS for f in fmts):
        raise ParameterError(f"formats must be among {FORMATS}; got {list(formats)}")
    return list(dict.fromkeys(fmts))


def _output_folder(out_dir: PathLike, report_path: PathLike | None) -> tuple[Path, Path]:
    """Create the output folder; check that it and the report's folder are writable."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    rpath = Path(report_path) if report_path is not None else out / REPORT_NAME
    for d, what in ((out, "output folder"), (rpath.parent, "report's folder")):
        if not os.access(d, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to the {what} {d}: it is not writable (or missing)")
    if rpath.is_dir():
        raise OutputError(f"the report path {rpath} is a directory; give a file name")
    return out, rpath


def _run_in_flight(report: Report, bar: Any, jobs: list[tuple[Path, str]], out: Path, fmts: list[str],
                   params: dict[str, Any], in_flight: int, *, local: bool) -> None:
    """The scenes on ``in_flight`` client threads, each submitting its own graph to the cluster.

    A scene's failure is its entry's (the others go on). On an interrupt (seen within 0.5 s) the scenes
    not started are dropped, the running ones are marked interrupted and the interrupt goes on at once.
    Those scenes' threads end with their computations: on the batch's own cluster, which the caller then
    closes, they fail; on a client that stays up they may finish, and their entries then say so. The
    writers are atomic, so the report and the files agree either way.
    """
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="xr_unmix-scene")
    try:
        left = {pool.submit(_run_entry, report, bar, scene, stem, out, fmts, params, local=local)
                for scene, stem in jobs}
        while left:  # woken at least every 0.5 s, so that a Ctrl-C reaches this thread promptly
            done, left = wait(left, timeout=0.5, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()  # a scene's thread re-raises only what is not a scene failure
    except BaseException:
        report.interrupted = True
        pool.shutdown(wait=False, cancel_futures=True)
        with report.lock:
            for e in report.entries:
                if e["status"] == "running":
                    e.update(status="interrupted", error="interrupted by the user")
        report.save()
        raise
    pool.shutdown()


def _run_entry(report: Report, bar: Any, scene: Path, stem: str, out: Path, fmts: list[str],
               params: dict[str, Any], *, local: bool) -> None:
    """One scene of the batch: its report entry, its failure recorded (the batch goes on)."""
    outputs = {f: out / f"{stem}.{f}" for f in fmts}
    entry: dict[str, Any] = {"scene": os.path.abspath(scene),
                             "outputs": {f: str(p) for f, p in outputs.items()},
                             "status": "running", "seconds": None, "pixels": None, "error": None,
                             "started": now()}
    report.append(entry)
    bar.set_postfix_str(scene.name)
    t0 = time.perf_counter()
    try:
        entry.update(_run_scene(scene, outputs, out / f"{stem}{_SIDECAR}", params,
                                report.result_params, overwrite=params["overwrite"], local=local))
    except KeyboardInterrupt:
        entry.update(status="interrupted", error="interrupted by the user")
        raise
    except Exception as exc:  # noqa: BLE001  (a failed scene must not stop the batch)
        if report.interrupted:  # the batch was interrupted and its cluster closed under this scene
            entry.update(status="interrupted", error="interrupted by the user")
            return
        msg = " ".join(str(exc).split()) or type(exc).__name__
        entry.update(status="failed", error=f"{type(exc).__name__}: {msg}",
                     traceback=traceback.format_exc(limit=6))
        bar.write(f"FAILED {scene}: {entry['error']}")
    finally:
        entry["seconds"] = round(time.perf_counter() - t0, 3)
        if entry["status"] == "done" and entry.get("pixels"):
            entry["mpx_per_s"] = round(entry["pixels"] / 1e6 / max(entry["seconds"], 1e-9), 3)
        report.save()
        bar.update(1)


def _run_scene(scene: Path, outputs: dict[str, Path], sidecar: Path, params: dict[str, Any],
               result_params: dict[str, Any], *, overwrite: bool,
               local: bool = True) -> dict[str, Any]:
    """Unmix one scene into its outputs unless they are complete; returns the entry's updates."""
    if not scene.is_file():
        raise MissingInputError(f"no such scene file: {scene}")
    for p in (*outputs.values(), sidecar):
        _atomic.clean_stale(p)  # scratch of a killed run
    fingerprint = {"scene": scene_fingerprint(scene), **result_params,
                   "formats": sorted(outputs)}
    if not overwrite and _is_complete(sidecar, fingerprint, outputs):
        meta = json.loads(sidecar.read_text())
        return {"status": "skipped", "pixels": meta.get("pixels"),
                "error": None, "note": "outputs complete (resume)"}
    sidecar.unlink(missing_ok=True)  # stale: another run's parameters, or incomplete outputs
    ab = pipeline.unmix_scene(scene, method=params["method"], endmembers=params["endmembers"],
                              model=params["model"], lam=params["lam"], device=params["device"],
                              chunk=params["chunk"], resample=params["resample"],
                              seed=params["seed"], local=local)
    pixels = int(ab.sizes["y"] * ab.sizes["x"])
    names = [str(v) for v in ab.endmember.values]
    # existing outputs of an incomplete or outdated run are replaced (only once the new one is whole)
    write(ab, cog=outputs.get("tif"), zarr=outputs.get("zarr"), overwrite=True)  # unmixed once
    _atomic.write_json(sidecar, {"fingerprint": fingerprint, "n_endmembers": len(names),
                                 "endmembers": names, "pixels": pixels, "written": now(),
                                 "outputs": {f: str(p) for f, p in outputs.items()}})
    return {"status": "done", "pixels": pixels, "endmembers": names}
