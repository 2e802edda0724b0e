"""Choosing the Dask scheduler: local threads (default), a running cluster, or a LocalCluster."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def dask_scheduler(address: str | None = None, workers: int | None = None, *,
                   threads_per_worker: int = 1) -> Iterator[Any]:
    """Run the enclosed Dask work on the chosen scheduler.

    Parameters
    ----------
    address : str, optional
        Address of a running ``distributed`` scheduler (e.g. ``tcp://10.0.0.5:8786``).
    workers : int, optional
        Start a ``LocalCluster`` of this many worker processes (loopback only, no dashboard) for the
        duration of the block.
    threads_per_worker : int
        Threads per worker of the LocalCluster (torch-heavy estimators prefer 1).

    Yields
    ------
    The ``distributed.Client``, or ``None`` for Dask's default local threads.
    """
    if address and workers:
        raise ValueError("give either a scheduler address or a number of workers, not both")
    if not address and not workers:
        yield None
        return
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    with LocalCluster(n_workers=int(workers), threads_per_worker=threads_per_worker, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, Client(cluster) as client:
        yield client
