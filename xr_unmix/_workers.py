"""Per-process policies for running torch inside Dask tasks.

Dask's threaded scheduler runs one task per core, and each torch op would by default also use every
core: N x N threads oversubscribe. Inside a Dask task we therefore give torch
``max(1, cores // dask_threads)`` intra-op threads, decided once per process (``torch.set_num_threads``
is process-global). On ``distributed`` workers the nanny already sets ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

_lock = threading.Lock()
_configured = False


def _dask_threads() -> int:
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        pass
    import dask

    n = dask.config.get("num_workers", None)
    return int(n) if n else (os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """Context for torch work inside a Dask task: sets the thread policy once per process."""
    global _configured
    if not _configured:
        with _lock:
            if not _configured:
                import torch

                from dask.utils import get_scheduler_lock  # noqa: F401  (dask importable)

                inside = threading.current_thread() is not threading.main_thread()
                if inside:
                    cores = os.cpu_count() or 1
                    torch.set_num_threads(max(1, cores // _dask_threads()))
                _configured = True
    yield


class ModelKernel:
    """Picklable kernel: a network's ``unmix_image`` on a block, in inference mode."""

    def __init__(self, model: Any, device: str, dtype: np.dtype) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype

    def __call__(self, block: np.ndarray) -> np.ndarray:
        import torch

        model = self.model
        with torch_threads(), torch.inference_mode():
            p = next(model.parameters(), None)
            mdtype = p.dtype if p is not None else torch.float32
            if p is not None and p.device.type != torch.device(self.device).type:
                model = model.to(self.device)
            Y = torch.as_tensor(block, dtype=mdtype, device=self.device)
            out = model.unmix_image(Y)
        return out.detach().cpu().numpy().astype(self.dtype, copy=False)
