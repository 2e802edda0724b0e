"""The one torch/BLAS thread policy (re-exported by :mod:`xr_unmix.runtime`, where callers import it).

Inside a Dask task torch gets :func:`torch_thread_count` intra-op threads (:func:`torch_threads`) and
numpy's BLAS one thread (:func:`task_blas_threads`); on the main thread the user's settings stand, and a
solver may spread independent pixel batches over :func:`batch_workers` threads of one torch thread each
(:func:`single_torch_thread`). ``XR_UNMIX_TORCH_THREADS`` overrides the torch rule. torch is imported
only by the functions that set its threads.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import dask
import numpy as np

_torch_lock = threading.Lock()
_torch_configured = False
_BLAS_LOCAL: object = None  # numpy's OpenBLAS ``openblas_set_num_threads_local``, once looked up


def in_dask_task() -> bool:
    """True off the main thread (a Dask thread) or on a ``distributed`` worker."""
    return threading.current_thread() is not threading.main_thread() or on_distributed_worker() is not None


def on_distributed_worker() -> Any:
    """The ``distributed.Worker`` running the current task, or ``None``."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover  (not Linux)
        return os.cpu_count() or 1


def _dask_threads() -> int:
    worker = on_distributed_worker()
    if worker is not None:
        with contextlib.suppress(AttributeError):
            return max(1, int(worker.state.nthreads))
    n = dask.config.get("num_workers", None)
    return int(n) if n else _cores()


def torch_thread_count() -> int:
    """The number of intra-op threads torch should use in this process for Dask work.

    ``XR_UNMIX_TORCH_THREADS`` if set; on a ``distributed`` worker, ``OMP_NUM_THREADS`` if set (the nanny
    sets it to 1) else ``cores // worker threads``; on local threads ``cores // dask threads``. At least 1.
    """
    env = os.environ.get("XR_UNMIX_TORCH_THREADS")
    if env:
        return max(1, int(env))
    if on_distributed_worker() is not None and os.environ.get("OMP_NUM_THREADS"):
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, _cores() // _dask_threads())


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """Context for torch work inside a Dask task: sets the thread policy once per process.

    Dask's threaded scheduler runs one task per core, and each torch op would by default also use
    every core: N x N threads oversubscribe. Inside a Dask task torch therefore gets
    :func:`torch_thread_count` threads, decided once per process (``torch.set_num_threads`` is
    process-global). Work on the main thread (a numpy cube) leaves the user's setting alone.
    """
    global _torch_configured
    if not _torch_configured:
        with _torch_lock:
            if not _torch_configured and in_dask_task():
                import torch

                torch.set_num_threads(torch_thread_count())
                _torch_configured = True
    yield


def set_torch_threads(n: int | None) -> None:
    """Set torch's process-wide intra-op threads to ``n`` (at least 1; ``None`` means 1).

    The command line's ``--threads``: small training mini-batches gain nothing from a second thread.
    """
    import torch

    torch.set_num_threads(max(1, int(n or 1)))


@contextlib.contextmanager
def torch_thread_limit(n: int) -> Iterator[None]:
    """torch on ``n`` intra-op threads inside the block (at least 1), the previous count restored after.

    ``torch.set_num_threads`` is process-wide: meant for the main thread, around a pool of
    :func:`batch_workers` threads, or for tests that must not depend on the host's cores.
    """
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def single_torch_thread() -> contextlib.AbstractContextManager[None]:
    """:func:`torch_thread_limit` of 1: around a pool of :func:`batch_workers` threads."""
    return torch_thread_limit(1)


def batch_workers(device: Any, n_batches: int) -> int:
    """Threads for independent pixel batches: torch's thread count, on CPU, from the main thread only.

    Running independent batches on separate threads with one torch thread each uses the cores better
    than intra-op threading of small element-wise kernels. Inside a Dask task the scheduler already
    runs blocks in parallel: 1.
    """
    if getattr(device, "type", str(device)) != "cpu" or n_batches < 2 or in_dask_task():
        return 1
    import torch

    return max(1, min(torch.get_num_threads(), n_batches))


def _blas_local_fn() -> object:
    global _BLAS_LOCAL
    if _BLAS_LOCAL is None:
        fn: object = False
        try:
            import ctypes
            import glob

            libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
            for lib in sorted(glob.glob(os.path.join(libdir, "lib*openblas*.so*"))):
                try:
                    f = ctypes.CDLL(lib).openblas_set_num_threads_local
                except (OSError, AttributeError):
                    continue
                f.restype, f.argtypes = ctypes.c_int, [ctypes.c_int]
                fn = f
                break
        except Exception:  # noqa: BLE001  (an optimisation only)
            fn = False
        _BLAS_LOCAL = fn
    return _BLAS_LOCAL


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """numpy's BLAS on ``n`` threads for the calling thread only, inside the block.

    Uses OpenBLAS's thread-local ``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27, as bundled with
    numpy 2); a no-op where numpy's BLAS lacks it, or with ``n=None``. Inside Dask tasks the scheduler
    already keeps the cores busy: OpenBLAS's own threads on top of it only spin (measured: a 5 x 200 by
    200 x 65536 float32 product cost 14 ms of CPU with numpy's default 2 threads, 6.6 ms with 1).
    """
    fn = _blas_local_fn() if n else False
    if not fn:
        yield
        return
    prev = fn(int(n))  # type: ignore[operator]
    try:
        yield
    finally:
        fn(prev)  # type: ignore[operator]


def task_blas_threads() -> contextlib.AbstractContextManager[None]:
    """:func:`blas_threads` with the policy applied: 1 off the main thread, numpy's own on it."""
    return blas_threads(1 if threading.current_thread() is not threading.main_thread() else None)
