"""Where and how xr_unmix computes: scheduler, settled computes, GDAL options, threads, devices.

Everything here is a per-process *policy*, kept in one module so that a reader finds each rule once:

- **Scheduler**: :func:`active_client`, :func:`describe_scheduler` and :func:`dask_scheduler` (local
  threads by default, a running ``distributed`` scheduler, or a loopback ``LocalCluster``).
- **Settled computes**: :func:`compute_settled` returns from a failed compute only once none of its
  tasks still runs (so a writer can delete its scratch output safely).
- **GDAL**: :func:`gdal_env` / :func:`gdal_options` (the block cache bound xr_unmix streams under).
- **Threads**: one torch/BLAS policy, defined in :mod:`xr_unmix._threads` and imported from here.
  Inside a Dask task torch gets :func:`torch_thread_count` intra-op threads (:func:`torch_threads`)
  and numpy's BLAS one thread (:func:`blas_threads`); on the main thread the user's settings stand,
  and a solver may spread independent pixel batches over :func:`batch_workers` threads of one torch
  thread each (:func:`single_torch_thread`; any count: :func:`torch_thread_limit`).
  ``XR_UNMIX_TORCH_THREADS`` overrides the torch rule.
- **Devices**: :func:`check_cuda` raises :class:`~xr_unmix.errors.DeviceError` for a GPU that torch
  cannot see (the one error type for a missing GPU, in every module).

This module imports nothing else from xr_unmix but :mod:`xr_unmix.errors`, :mod:`xr_unmix._threads`
and (lazily, with ``distributed``) :mod:`xr_unmix._connect`: it sits at the bottom of the import graph
(``tests/test_architecture.py`` checks that there is no import circle).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.threaded
from dask.base import get_scheduler

from ._threads import (  # noqa: F401  (the thread policy's public names live here)
    batch_workers,
    blas_threads,
    in_dask_task,
    on_distributed_worker,
    set_torch_threads,
    single_torch_thread,
    task_blas_threads,
    torch_thread_count,
    torch_thread_limit,
    torch_threads,
)
from .errors import DeviceError, ParameterError

# -- scheduler -------------------------------------------------------------------------------------

def active_client() -> Any:
    """The ``distributed.Client`` Dask would use now, or ``None`` (local threads).

    ``distributed`` is not imported by this check if nothing imported it yet (then there is no client).
    """
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def describe_scheduler(client: Any = None) -> dict[str, Any]:
    """A JSON-able description of the scheduler in use (for run reports).

    Returns
    -------
    dict
        ``{"kind": "threads", "threads": n}`` or ``{"kind": "distributed", "address": ...,
        "workers": n, "threads": total}``.
    """
    client = client if client is not None else active_client()
    if client is None:
        n = dask.config.get("num_workers", None) or os.cpu_count() or 1
        return {"kind": "threads", "threads": int(n)}
    info = client.scheduler_info()
    workers = info.get("workers", {})
    return {"kind": "distributed", "address": str(client.scheduler.address),
            "workers": len(workers),
            "threads": int(sum(w.get("nthreads", 0) for w in workers.values()))}


def dashboard_line(client: Any) -> str:
    """One line that names the Dask dashboard of ``client`` (printed by ``run``/``batch --workers``)."""
    try:
        link = client.dashboard_link if client is not None else None
    except Exception:  # noqa: BLE001  (no dashboard service on this scheduler)
        link = None
    return f"Dask dashboard: {link}" if link else \
        "Dask dashboard: none (install the dashboard extra, bokeh, to get one)"


@contextlib.contextmanager
def dask_scheduler(address: str | None = None, workers: int | None = None, *,
                   threads_per_worker: int = 1, memory_limit: str | int | None = "auto",
                   silence_logs: int = logging.WARNING) -> Iterator[Any]:
    """Run the enclosed Dask work on the chosen scheduler.

    Parameters
    ----------
    address : str, optional
        Address of a running ``distributed`` scheduler (e.g. ``tcp://10.0.0.5:8786``). Workers must see
        the input and output paths (a shared file system) since they read and write the tiles.
    workers : int, optional
        Start a ``LocalCluster`` of this many worker processes (every port on loopback
        ``127.0.0.1``, chosen free: the scheduler's HTTP server included) for the duration of the block.
    threads_per_worker : int
        Threads per worker of the LocalCluster (torch-heavy estimators prefer 1: torch then gets
        ``OMP_NUM_THREADS=1`` per task, and workers x threads is the number of busy cores).
    memory_limit : str or int, optional
        Per-worker memory limit of the LocalCluster (Dask's ``"auto"``: RAM / workers).
    silence_logs : int
        Log level of the LocalCluster's processes.

    Yields
    ------
    The ``distributed.Client`` in use -- the new one, or one that was already active when neither
    ``address`` nor ``workers`` is given -- or ``None`` for Dask's default local threads.
    """
    if address and workers:
        raise ParameterError("give either a scheduler address or a number of workers, not both")
    if workers is not None and int(workers) < 1:
        raise ParameterError(f"workers must be >= 1, got {workers}").about("workers")
    if not address and not workers:
        yield active_client()
        return
    from distributed import Client, LocalCluster

    if address:
        from ._connect import connect_client

        client = connect_client(address)  # SchedulerError within ~20 s, handshake included
        with client:
            yield client
        return
    # GDAL reads the environment variable as MB below 100000 (unlike rasterio.Env, which takes bytes)
    env = {"GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX") or str(GDAL_CACHE_MB)}
    # while the cluster runs: a worker that its nanny restarts reads the same settings
    with _malloc_defaults(), _lean_workers(), LocalCluster(
            n_workers=int(workers), threads_per_worker=threads_per_worker, processes=True,
            host="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=memory_limit,
            silence_logs=silence_logs, env=env) as cluster, Client(cluster) as client:
        yield client


#: distributed's default ``MALLOC_TRIM_THRESHOLD_`` for nanny-started workers (``distributed.yaml``).
_DISTRIBUTED_TRIM_DEFAULT = 65536


@contextlib.contextmanager
def _malloc_defaults() -> Iterator[None]:
    """Start the LocalCluster's workers with glibc's own malloc thresholds.

    distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in every worker (config
    ``distributed.nanny.pre-spawn-environ``). Setting any malloc threshold turns off glibc's dynamic
    mmap threshold, so every allocation of 128 KB or more then maps fresh pages: 130-150k minor page
    faults per 1024² FCLS run against 17-30k on threads, and 1.4-1.6x the CPU (docs/batch.md). Here
    the key is dropped while the cluster starts (which also keeps the nanny from copying it into this
    process's environment). A value the user chose -- ``MALLOC_TRIM_THRESHOLD_`` in the environment,
    or a non-default Dask config -- is kept.
    """
    key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    configured = dask.config.get(key, None)
    user_set = "MALLOC_TRIM_THRESHOLD_" in os.environ or (
        configured is not None and str(configured) != str(_DISTRIBUTED_TRIM_DEFAULT))
    if user_set:
        yield
        return
    with dask.config.set({key: None}):
        yield


#: distributed's defaults that :func:`_lean_workers` changes, and what it sets instead.
_LEAN_WORKERS = {"distributed.worker.profile.enabled": (True, False)}


@contextlib.contextmanager
def _lean_workers() -> Iterator[None]:
    """Run the LocalCluster's workers without distributed's statistical profiler.

    A worker samples its threads' stacks every 10 ms for the dashboard's profile page. Measured on an
    idle 2-worker LocalCluster, 5 s each, two runs: 0.16-0.19 CPU-s per worker with it, 0.11-0.12
    without (load 8 from other jobs). Only the dashboard's profile page is lost. (A 1 s event-loop
    tick instead of 20 ms saved another 0.06 per worker, but two cluster tests failed with it -- a
    worker restarted by its nanny still missing at the next test -- so it is not set.) A value the
    user configured is kept.
    """
    changes = {k: new for k, (default, new) in _LEAN_WORKERS.items()
               if str(dask.config.get(k, default)) == str(default)}
    with dask.config.set(changes):
        yield


# -- settled computes -----------------------------------------------------------------------------

def runs_on_client(obj: Any) -> bool:
    """True if computing the Dask collection ``obj`` now would run on an active ``distributed`` client."""
    client = active_client()
    return client is not None and get_scheduler(collections=[obj]) == client.get


def compute_settled(obj: Any, *, settle_timeout: float = 60.0) -> Any:
    """Compute a Dask collection; if it fails, return only once none of its tasks is still running.

    Dask raises on the first failed task while other tasks of the same graph may still be running, and
    those would go on writing chunks into a temporary output that the caller is about to delete. On
    the local threaded scheduler the graph runs on a private thread pool that is shut down (waiting for
    running tasks, cancelling queued ones) before the error propagates; under ``distributed`` the
    futures are cancelled and the workers polled until none of them still executes one of the graph's
    tasks (a cancelled task's thread runs to its end; at most ``settle_timeout`` seconds). Other
    schedulers compute as usual.
    """
    client = active_client()
    sched = get_scheduler(collections=[obj])
    if runs_on_client(obj):
        fut = client.compute(obj)
        try:
            return fut.result()
        except BaseException:
            names = _layer_names(obj)
            fut.cancel()
            deadline = time.monotonic() + settle_timeout
            while time.monotonic() < deadline:
                try:
                    # a cancelled task leaves the scheduler's ``processing`` at once, but its worker
                    # thread runs on to the end: ask the workers what they still execute
                    running = client.run(_executing_keys)
                    busy = [k for keys in running.values() for k in keys if _key_name(k) in names]
                except Exception:  # noqa: BLE001  (scheduler gone: nothing more will run)
                    break
                if not busy:
                    break
                time.sleep(0.1)
            raise
    if sched is dask.threaded.get:
        n = dask.config.get("num_workers", None) or os.cpu_count() or 1
        pool = ThreadPoolExecutor(int(n), thread_name_prefix="xr_unmix-write")
        try:
            with dask.config.set(pool=pool):
                return dask.compute(obj)[0]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return dask.compute(obj)[0]


def _layer_names(obj: Any) -> set[str]:
    graph = obj.__dask_graph__()
    names = set(getattr(graph, "layers", {}) or {})
    names.update(_key_name(k) for k in graph)
    return names


def _executing_keys(dask_worker: Any) -> list[Any]:
    """The keys a ``distributed`` worker is executing now (cancelled ones included); run by ``client.run``."""
    return [ts.key for ts in list(dask_worker.state.executing)]


def _key_name(key: Any) -> str:
    k = key[0] if isinstance(key, tuple) else key
    return str(k)


# -- GDAL ------------------------------------------------------------------------------------------

#: GDAL block cache (MB) while xr_unmix streams a scene, unless ``GDAL_CACHEMAX`` is set in the
#: environment. GDAL's default (5 % of RAM) lets the cache of a hyperspectral read grow past 1 GB
#: (200 bands x 256² px is 52 MB per chunk), which only costs memory when chunks are read once.
GDAL_CACHE_MB = 64


def gdal_cache_bytes() -> int:
    """GDAL's block cache size, in **bytes**, for a ``rasterio.Env``.

    ``rasterio.Env(GDAL_CACHEMAX=n)`` calls ``GDALSetCacheMax64(n)``, which takes bytes (an integer
    such as 64 is a 64-byte cache, which turns GDAL's block cache off: a lazy ``to_cog`` then ran 35x
    slower than its ``compute()``). The ``GDAL_CACHEMAX`` environment variable, by contrast, is read by
    GDAL as MB when below 100000, ``"64MB"`` or ``"5%"``: :func:`gdal_env` leaves that to GDAL.
    """
    return int(GDAL_CACHE_MB) * 2**20


def gdal_options(**extra: Any) -> dict[str, Any]:
    """The GDAL configuration options xr_unmix's writers run under (see :func:`gdal_env`)."""
    opts: dict[str, Any] = {} if os.environ.get("GDAL_CACHEMAX") else {
        "GDAL_CACHEMAX": gdal_cache_bytes()}
    opts.update(extra)
    return opts


def gdal_env(**extra: Any) -> contextlib.AbstractContextManager[Any]:
    """A ``rasterio.Env`` that bounds GDAL's block cache to :data:`GDAL_CACHE_MB` for the streaming.

    The setting is process-wide while the context is open, so it also covers the reads that Dask's
    threads make; ``distributed`` workers get it through their environment (see
    :func:`dask_scheduler`). A ``GDAL_CACHEMAX`` environment variable wins. ``extra``
    are further GDAL configuration options (``GDAL_NUM_THREADS="ALL_CPUS"``).
    """
    import rasterio

    return rasterio.Env(**gdal_options(**extra))


# -- devices ---------------------------------------------------------------------------------------

def check_cuda(device: Any) -> None:
    """Raise :class:`~xr_unmix.errors.DeviceError` if ``device`` is a CUDA device torch cannot see here.

    On a ``distributed`` worker the message names the worker.
    """
    if not str(device).startswith("cuda"):
        return
    import torch

    if torch.cuda.is_available():
        return
    worker = on_distributed_worker()
    where = f"worker {worker.address}" if worker is not None else "this machine"
    raise DeviceError(f"device {str(device)!r} was requested but torch sees no CUDA GPU on {where}; "
                      "use device 'cpu' (or run on GPU workers)").about("device")
