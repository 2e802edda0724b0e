"""Choosing the Dask scheduler (kept for its public names; the rules live in :mod:`xr_unmix.runtime`).

Everything in xr_unmix is lazy Dask until a writer (or ``.compute()``) runs it, so the scheduler is
whatever Dask would use at that moment: a ``distributed.Client`` that is active (the last one created,
or one entered with ``with Client(...)``) takes over automatically, otherwise Dask's local threads.
:func:`dask_scheduler` is the CLI's way of choosing explicitly.
"""

from __future__ import annotations

from .runtime import active_client, dask_scheduler, describe_scheduler

__all__ = ["active_client", "dask_scheduler", "describe_scheduler"]
