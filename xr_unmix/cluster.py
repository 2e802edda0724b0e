"""Choosing the Dask scheduler: local threads (default), a running cluster, or a LocalCluster.

Everything in xr_unmix is lazy Dask until a writer (or ``.compute()``) runs it, so the scheduler is
whatever Dask would use at that moment: a ``distributed.Client`` that is active (the last one created,
or one entered with ``with Client(...)``) takes over automatically, otherwise Dask's local threads.
:func:`dask_scheduler` is the CLI's way of choosing explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from .errors import ParameterError, SchedulerError


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
        import dask

        n = dask.config.get("num_workers", None) or os.cpu_count() or 1
        return {"kind": "threads", "threads": int(n)}
    info = client.scheduler_info()
    workers = info.get("workers", {})
    return {"kind": "distributed", "address": str(client.scheduler.address),
            "workers": len(workers),
            "threads": int(sum(w.get("nthreads", 0) for w in workers.values()))}


#: Seconds :func:`connect_client` waits for a scheduler to answer (the handshake included).
CONNECT_TIMEOUT = 10.0


def probe_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect to ``address`` and complete distributed's handshake within ``timeout`` seconds.

    ``distributed.Client(address, timeout=...)`` bounds the TCP connect but not the handshake read that
    follows it: a port that accepts connections but does not speak Dask's protocol (another service, a
    half-dead scheduler) makes it wait without limit. This probe runs the same connect + handshake on a
    private event loop under :func:`asyncio.wait_for`, so it fails in at most ``timeout`` seconds.
    Addresses with a scheme other than ``tcp`` (``tls://``, ``inproc://``) are left to ``Client``.

    Raises
    ------
    SchedulerError
        Nothing answered at ``address`` (refused, unreachable, or silent) within ``timeout``.
    """
    import asyncio
    import threading

    if "://" in address and not address.startswith("tcp://"):
        return
    addr = address if "://" in address else f"tcp://{address}"

    async def handshake() -> None:
        from distributed.comm import connect

        comm = await asyncio.wait_for(connect(addr, timeout=timeout), timeout)
        await comm.close()

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(handshake(), timeout))
        except BaseException as exc:  # noqa: BLE001  (reported by the caller's thread)
            failure.append(exc)

    t = threading.Thread(target=run, name="xr_unmix-probe", daemon=True)
    t.start()
    t.join(timeout + 2.0)
    if t.is_alive() or failure:
        why = ("timed out" if t.is_alive() or isinstance(failure[0], asyncio.TimeoutError | TimeoutError)
               else " ".join(str(failure[0]).split()) or type(failure[0]).__name__)
        raise SchedulerError(f"no Dask scheduler answered at {address} within {timeout:g} s ({why}); "
                             "check the address and that the scheduler is running").about("scheduler")


def connect_client(address: str, timeout: float = CONNECT_TIMEOUT) -> Any:
    """A ``distributed.Client`` for the scheduler at ``address``, or :class:`SchedulerError` within
    about ``2 * timeout`` seconds (the probe, then the client's own connect)."""
    from distributed import Client

    probe_scheduler(address, timeout)
    try:
        return Client(address, timeout=f"{timeout:g}s")
    except (OSError, TimeoutError) as exc:
        raise SchedulerError(f"cannot reach the Dask scheduler at {address}: "
                             f"{' '.join(str(exc).split())}").about("scheduler") from exc


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
        client = connect_client(address)
        with client:
            yield client
        return
    import os

    from .io import GDAL_CACHE_MB

    # GDAL reads the environment variable as MB below 100000 (unlike rasterio.Env, which takes bytes)
    env = {"GDAL_CACHEMAX": os.environ.get("GDAL_CACHEMAX") or str(GDAL_CACHE_MB)}
    with _malloc_defaults(), LocalCluster(
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
    import dask

    key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    configured = dask.config.get(key, None)
    user_set = "MALLOC_TRIM_THRESHOLD_" in os.environ or (
        configured is not None and str(configured) != str(_DISTRIBUTED_TRIM_DEFAULT))
    if user_set:
        yield
        return
    with dask.config.set({key: None}):
        yield
