"""Per-process policies for running torch inside Dask tasks, on local threads or on ``distributed`` workers.

Threads
-------
Inside a task torch runs under the package's one thread policy, :func:`xr_unmix.runtime.torch_threads`
(``torch_thread_count`` and ``torch_threads`` stay importable from here).

Models on workers
-----------------
:class:`ModelKernel` is the picklable kernel that applies a network to a block. On local threads it uses
the model object it was given. When pickled (what ``distributed`` does to ship tasks), it carries only
the model's *state* -- for an :class:`~xr_unmix.models.UnmixModel` the class path, its JSON config and
its weights as safetensors bytes -- plus a SHA-256 content hash. Each worker process rebuilds the model
the first time a task needs it and keeps it in a per-process cache keyed by that hash (and the device),
so a run builds the model once per worker process, not once per chunk; a retrained model has another
hash and is rebuilt. :func:`model_cache_info` reports the builds of the current process (query it on
every worker with ``client.run(model_cache_info)``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import io
import json
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from .runtime import check_cuda, on_distributed_worker, torch_thread_count, torch_threads  # noqa: F401

#: models built in this process, by (content hash, device); bounded (least recently used dropped)
_MODEL_CACHE: OrderedDict[tuple[str, str], Any] = OrderedDict()
_MODEL_CACHE_LOCK = threading.Lock()
_MODEL_CACHE_SIZE = 4
_builds = 0  #: how many models this process built from a payload (cache misses)

#: payloads up to this size (bytes) travel inside each task; larger ones, when a ``distributed.Client``
#: is active as the kernel is made, are broadcast to every worker once and tasks carry only their key
INLINE_MAX_BYTES = 4 * 2**20


# -- models on workers -----------------------------------------------------------------------------

def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str) -> type:
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def model_payload(model: Any) -> tuple[dict[str, Any], str]:
    """Serialise ``model`` for shipping to workers, and hash the result.

    Parameters
    ----------
    model : torch.nn.Module
        An :class:`~xr_unmix.models.UnmixModel` travels as ``{"kind": "xr_unmix", "class": "module:Class",
        "config": {...}, "weights": <safetensors bytes>}`` (no pickled code); any other module as
        ``{"kind": "pickle", "data": <torch.save bytes>}``.

    Returns
    -------
    payload : dict
    key : str
        SHA-256 hex digest of the payload (class, config and weights).
    """
    from .models.base import UnmixModel

    h = hashlib.sha256()
    if isinstance(model, UnmixModel):
        from safetensors.torch import save

        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        weights = save(tensors)
        config = json.dumps({**model._base_config(), **model.config}, sort_keys=True, default=str)
        payload = {"kind": "xr_unmix", "class": _class_path(model), "config": config,
                   "weights": weights}
        for part in (payload["class"], config):
            h.update(part.encode())
        h.update(weights)
    else:
        import torch

        buf = io.BytesIO()
        torch.save(model, buf)
        payload = {"kind": "pickle", "data": buf.getvalue()}
        h.update(payload["data"])
    return payload, h.hexdigest()


def _build(payload: dict[str, Any]) -> Any:
    import torch

    if payload["kind"] == "xr_unmix":
        from safetensors.torch import load

        from .models import _load_all  # noqa: F401  (registers the model classes)

        cls = _import_class(payload["class"])
        model = cls._from_config(json.loads(payload["config"]))
        model.load_state_dict(load(payload["weights"]), strict=True)
    else:
        model = torch.load(io.BytesIO(payload["data"]), weights_only=False)
    return model.eval()


def cached_model(key: str, payload: dict[str, Any], device: str) -> Any:
    """The model for ``key`` on ``device``, built from ``payload`` once per process."""
    global _builds
    with _MODEL_CACHE_LOCK:
        model = _MODEL_CACHE.get((key, device))
        if model is None:
            model = _build(payload).to(device)
            _builds += 1
            _MODEL_CACHE[(key, device)] = model
            while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
                _MODEL_CACHE.popitem(last=False)
        else:
            _MODEL_CACHE.move_to_end((key, device))
        return model


def model_cache_info() -> dict[str, Any]:
    """This process's model cache: ``{"pid", "builds", "keys"}`` (builds = cache misses so far)."""
    with _MODEL_CACHE_LOCK:
        return {"pid": os.getpid(), "builds": _builds,
                "keys": [f"{k[:12]}@{d}" for k, d in _MODEL_CACHE]}


def clear_model_cache() -> None:
    """Empty this process's model cache and reset its build counter."""
    global _builds
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE.clear()
        _builds = 0


def _check_device(device: str) -> str:
    check_cuda(device)
    return str(device)


class ModelKernel:
    """Picklable kernel: a network's ``unmix_image`` on a block, in inference mode.

    Parameters
    ----------
    model : torch.nn.Module
        Usually an :class:`~xr_unmix.models.UnmixModel`; ``unmix_image((bands, h, w)) -> (R, h, w)``.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; checked where the kernel runs (a worker without a GPU
        raises a clear :class:`RuntimeError`).
    dtype : numpy dtype
        Output dtype.
    batch_size : int, optional
        Pixel-wise models: at most this many pixels per forward pass (default: the whole block).

    Notes
    -----
    In the process that made it, the kernel uses ``model`` itself (a copy moved to ``device`` when the
    model lives elsewhere, so the caller's model is not moved). Pickled, it carries the model's state
    and content hash (see :func:`model_payload`) and rebuilds it through the per-process cache. A
    payload over :data:`INLINE_MAX_BYTES` is broadcast to the workers of the client active when the
    kernel is made (``client.scatter(..., broadcast=True)``), and tasks then carry only its key.
    """

    def __init__(self, model: Any, device: str, dtype: np.dtype, *,
                 batch_size: int | None = None) -> None:
        self.model = model
        self.device = str(device)
        self.dtype = np.dtype(dtype)
        self.batch_size = None if batch_size is None else int(batch_size)
        self._payload: dict[str, Any] | None = None
        self._key: str | None = None
        self._local: Any = None
        self._local_lock = threading.Lock()
        self._scattered: Any = None  #: a distributed Future of the payload (large models)
        self._broadcast_if_large()

    def _broadcast_if_large(self) -> None:
        """With an active client and a payload over :data:`INLINE_MAX_BYTES`: scatter it to all workers."""
        from .cluster import active_client

        client = active_client()
        if client is None:
            return
        self._ensure_payload()
        assert self._payload is not None
        size = sum(len(v) for v in self._payload.values() if isinstance(v, bytes | str))
        if size > INLINE_MAX_BYTES:
            # in a list: a dict given directly would be scattered value by value
            self._scattered = client.scatter([self._payload], broadcast=True, hash=False)[0]

    @property
    def key(self) -> str:
        """SHA-256 of the model's state (computed on first use)."""
        self._ensure_payload()
        assert self._key is not None
        return self._key

    def _ensure_payload(self) -> None:
        if self._key is None:
            self._payload, self._key = model_payload(self.model)

    def __getstate__(self) -> dict[str, Any]:
        self._ensure_payload()
        if self._scattered is not None:  # a Future here, its key once unpickled (re-pickled)
            skey = self._scattered if isinstance(self._scattered, str) else str(self._scattered.key)
            return {"payload": None, "scattered": skey, "key": self._key,
                    "device": self.device, "dtype": self.dtype.str, "batch_size": self.batch_size}
        return {"payload": self._payload, "scattered": None, "key": self._key,
                "device": self.device, "dtype": self.dtype.str, "batch_size": self.batch_size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model = None
        self._payload = state["payload"]
        self._scattered = state.get("scattered")  # the key of the broadcast payload, or None
        self._key = state["key"]
        self.device = state["device"]
        self.dtype = np.dtype(state["dtype"])
        self.batch_size = state.get("batch_size")
        self._local = None
        self._local_lock = threading.Lock()

    def _fetch_payload(self) -> dict[str, Any]:
        """The broadcast payload: from this worker's memory, else from another worker."""
        from distributed import Future, get_worker, worker_client

        key = self._scattered
        worker = get_worker()
        if key in worker.data:
            return worker.data[key]
        with worker_client() as client:  # e.g. a worker restarted after the broadcast
            return client.gather(Future(key, client=client))

    def __dask_tokenize__(self) -> tuple[str, str, str, str, int]:
        return ("xr_unmix.ModelKernel", self.key, self.device, self.dtype.str, self.batch_size or 0)

    def _resolve(self) -> Any:
        import torch

        device = _check_device(self.device)
        if self.model is None:  # unpickled: a worker process
            assert self._key is not None
            with _MODEL_CACHE_LOCK:
                hit = _MODEL_CACHE.get((self._key, device))
            if hit is not None:
                return hit
            payload = self._payload if self._payload is not None else self._fetch_payload()
            return cached_model(self._key, payload, device)
        p = next(self.model.parameters(), None)
        if p is None or p.device == torch.device(device) or (
                p.device.type == device == "cpu"):
            return self.model
        with self._local_lock:
            if self._local is None:
                self._local = copy.deepcopy(self.model).to(device).eval()
            return self._local

    def __call__(self, block: np.ndarray) -> np.ndarray:
        """``(bands, h, w)`` finite block -> ``(R, h, w)`` abundances of ``dtype``."""
        import torch

        with torch_threads(), torch.inference_mode():
            model = self._resolve()
            p = next(model.parameters(), None)
            mdtype = p.dtype if p is not None else torch.float32
            Y = torch.as_tensor(block, dtype=mdtype, device=self.device)
            b, h, w = Y.shape
            n = self.batch_size
            if n and getattr(model, "pixelwise", False) and h * w > n:
                flat = Y.reshape(b, 1, h * w)  # column slices keep the (bands, pixels) layout
                out = torch.cat([model.unmix_image(flat[:, :, i:i + n])
                                 for i in range(0, h * w, n)], dim=2).reshape(-1, h, w)
            else:
                out = model.unmix_image(Y)
        return out.detach().cpu().numpy().astype(self.dtype, copy=False)
