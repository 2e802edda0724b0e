"""The batch's JSON report: versions, the per-scene entries, atomic saves (:mod:`xr_unmix.batch`)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._scenes import file_sha256
from .io import atomic as _atomic

PathLike = str | os.PathLike[str]


def versions() -> dict[str, str]:
    """Versions of xr_unmix and the libraries that shape its results (for run reports)."""
    from importlib import metadata

    from . import __version__

    out = {"xr_unmix": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "torch", "dask", "distributed", "xarray", "rioxarray", "rasterio", "zarr"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        import rasterio

        out["gdal"] = str(rasterio.__gdal_version__)
    except ImportError:  # pragma: no cover
        pass
    return out


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


class Report:
    """The batch's JSON report, rewritten (atomically) after every scene."""

    def __init__(self, path: Path, specs: Sequence[PathLike], paths: list[Path],
                 unmatched: list[str], params: dict[str, Any], out: Path) -> None:
        self.path = path
        self.lock = threading.RLock()  # scenes in flight append and save from their own threads
        self.interrupted = False
        self.total = len(paths) + len(unmatched)
        self.entries: list[dict[str, Any]] = [
            {"scene": spec, "outputs": {}, "status": "failed", "seconds": 0.0, "pixels": None,
             "error": "no file matches this pattern / list" if not spec.startswith("@")
             else "list file missing or empty"} for spec in unmatched]
        self.data: dict[str, Any] = {
            "started": now(), "finished": None, "host": socket.gethostname(),
            "inputs": {"specs": [os.fspath(s) for s in specs],
                       "scenes": [os.path.abspath(p) for p in paths], "unmatched": unmatched},
            "parameters": params, "out_dir": os.path.abspath(out), "versions": versions(),
            "scheduler": None, "scenes": self.entries, "summary": {}, "report_path": str(path),
        }
        # what the results depend on: a change re-runs the scene even if its outputs exist
        em, model = params["endmembers"], params["model"]
        self.result_params = {
            "method": params["method"], "lam": params["lam"], "resample": params["resample"],
            "seed": params["seed"], "endmembers": None if em is None else str(em),
            "endmembers_sha256": file_sha256(em) if em else None,
            "model_sha256": file_sha256(model) if model else None}
        self.save()

    def save(self) -> None:
        with self.lock:
            st = [e["status"] for e in self.entries]
            self.data["summary"] = {k: st.count(k) for k in ("done", "skipped", "failed")} | {
                "total": self.total}
            _atomic.write_json(self.path, self.data)

    def append(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.entries.append(entry)

    def order(self, paths: Sequence[Path]) -> None:
        """Entries in the scenes' order (scenes in flight start and end in any order); unmatched first."""
        rank = {os.path.abspath(p): i for i, p in enumerate(paths)}
        with self.lock:
            self.entries.sort(key=lambda e: rank.get(e["scene"], -1))
