"""Per-process policies for running torch inside Dask tasks, on local threads or on ``distributed`` workers.

Threads
-------
Inside a task torch runs under the package's one thread policy, :func:`xr_unmix.runtime.torch_threads`
(``torch_thread_count`` and ``torch_threads`` stay importable from here).

Models on workers
-----------------
:class:`ModelKernel` is the picklable kernel that applies a network to a block. On local threads it uses
the model object it was given. When serialised (what ``distributed`` does to ship tasks), it carries the
model *file bytes* of :func:`xr_unmix.models.registry.model_to_bytes` (safetensors tensors plus a JSON
config: no code) and their SHA-256. A worker checks the hash, then rebuilds the model through
:func:`xr_unmix.models.registry.model_from_bytes` -- the same checks as opening a file, so a tampered
payload is refused with :class:`~xr_unmix.errors.ModelFileError` as a tampered file is. Models that are
not registered xr_unmix models are refused when the kernel is made (they have no safe byte form).

Each worker process keeps the models it built in a per-process cache keyed by the hash (and the device),
so a run builds the model once per worker process, not once per chunk; a retrained model has another
hash and is rebuilt. :func:`model_cache_info` reports the builds of the current process (query it on
every worker with ``client.run(model_cache_info)``). A payload over :data:`INLINE_MAX_BYTES` is broadcast
to the workers once; a worker that lacks it (e.g. restarted after the broadcast) fetches it from another
one, waiting at most :data:`FETCH_TIMEOUT_S` seconds.
"""

from __future__ import annotations

import copy
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np

from .errors import InputTypeError, ModelFileError
from .runtime import check_cuda, on_distributed_worker, torch_thread_count, torch_threads  # noqa: F401

#: models built in this process, by (content hash, device); bounded (least recently used dropped)
_MODEL_CACHE: OrderedDict[tuple[str, str], Any] = OrderedDict()
_MODEL_CACHE_LOCK = threading.Lock()
_MODEL_CACHE_SIZE = 4
_builds = 0  #: how many models this process built from a payload (cache misses)

#: payloads up to this size (bytes) travel inside each task; larger ones, when a ``distributed.Client``
#: is active as the kernel is made, are broadcast to every worker once and tasks carry only their key
INLINE_MAX_BYTES = 4 * 2**20
#: longest wait (s) of a worker for a broadcast payload it does not hold (installed by a plugin)
FETCH_TIMEOUT_S = 60.0
#: event topic on which workers report the inner solves of their tasks (see :func:`_on_solves`)
SOLVES_TOPIC = "xr_unmix-solves"
#: the caller's models by content hash, to which the solve records of workers are added
_LIVE: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_SUBSCRIBED: weakref.WeakSet[Any] = weakref.WeakSet()


# -- models on workers -----------------------------------------------------------------------------

def model_payload(model: Any) -> tuple[bytes, str]:
    """The bytes that ship ``model`` to workers, and their SHA-256.

    Parameters
    ----------
    model : UnmixModel
        A registered xr_unmix model.

    Returns
    -------
    payload : bytes
        :func:`xr_unmix.models.registry.model_to_bytes` output (a model file's content).
    key : str
        SHA-256 hex digest of ``payload``.
    """
    from .models.registry import digest, model_to_bytes

    data = model_to_bytes(model)
    return data, digest(data)


def build_model(payload: bytes, key: str) -> Any:
    """Check ``payload`` against its SHA-256 ``key``, then rebuild the model through the registry.

    Raises
    ------
    ModelFileError
        The bytes do not hash to ``key`` (altered on the way or tampered with), or the registry refuses
        them (as it would refuse a file with that content).
    """
    from .models.registry import digest, model_from_bytes

    if not isinstance(payload, bytes | bytearray):
        raise ModelFileError(f"worker payload {key[:12]}: expected model bytes, got "
                             f"{type(payload).__name__}")
    got = digest(bytes(payload))
    if got != key:
        raise ModelFileError(f"worker payload {key[:12]}: its SHA-256 is {got[:12]}, not the "
                             f"{key[:12]} it was sent with (altered on the way or tampered with); "
                             "refused")
    return model_from_bytes(bytes(payload), source=f"worker payload {key[:12]}").eval()


def cached_model(key: str, payload: bytes, device: str) -> Any:
    """The model for ``key`` on ``device``, built from ``payload`` once per process."""
    global _builds
    with _MODEL_CACHE_LOCK:
        model = _MODEL_CACHE.get((key, device))
        if model is None:
            model = build_model(payload, key).to(device)
            _builds += 1
            _MODEL_CACHE[(key, device)] = model
            while len(_MODEL_CACHE) > _MODEL_CACHE_SIZE:
                _MODEL_CACHE.popitem(last=False)
        else:
            _MODEL_CACHE.move_to_end((key, device))
        return model


def _on_solves(event: tuple[float, dict[str, Any]]) -> None:
    """Client side: add the solve records a worker reported to the caller's model (stats, warnings)."""
    msg = event[1]
    model = _LIVE.get(msg.get("key", ""))
    if model is not None:
        for rec in msg.get("records", ()):
            model.record_solve(rec, warn=True)


def _follow_solves(model: Any, key: str, client: Any) -> None:
    """Route the solve records of ``model``'s tasks on ``client``'s workers back to ``model``."""
    _LIVE[key] = model
    if client not in _SUBSCRIBED:
        client.subscribe_topic(SOLVES_TOPIC, _on_solves)
        _SUBSCRIBED.add(client)


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
    model : UnmixModel
        A registered xr_unmix model (:func:`xr_unmix.models.register_model`);
        ``unmix_image((bands, h, w)) -> (R, h, w)``. Any other module is refused
        (:class:`~xr_unmix.errors.InputTypeError`): it has no byte form a worker could open safely.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; checked where the kernel runs (a worker without a GPU
        raises :class:`~xr_unmix.errors.DeviceError`).
    dtype : numpy dtype
        Output dtype.
    batch_size : int, optional
        Pixel-wise models: at most this many pixels per forward pass (default: the whole block).

    Notes
    -----
    In the process that made it, the kernel uses ``model`` itself (a copy moved to ``device`` when the
    model lives elsewhere, so the caller's model is not moved). Pickled, it carries the model's bytes
    and their hash (see :func:`model_payload`) and rebuilds it through the per-process cache
    (:func:`build_model` checks the hash first). A payload over :data:`INLINE_MAX_BYTES` is broadcast
    to the workers of the client active when the kernel is made (a worker plugin,
    :mod:`xr_unmix._worker_plugin`, so that restarted workers get it too), and tasks then carry only
    its key.
    """

    def __init__(self, model: Any, device: str, dtype: np.dtype, *,
                 batch_size: int | None = None) -> None:
        from .models.registry import registered

        cls = type(model)
        if registered().get(cls.__name__) is not cls:
            raise InputTypeError(
                f"{cls.__module__}.{cls.__qualname__} is not a registered xr_unmix model; only those "
                "can run on workers (decorate an UnmixModel subclass with "
                "xr_unmix.models.register_model); xr_unmix never serialises code")
        self.model = model
        self.spec = model.tile_spec
        self.device = str(device)
        self.dtype = np.dtype(dtype)
        self.batch_size = None if batch_size is None else int(batch_size)
        self._payload: bytes | None = None
        self._key: str | None = None
        self._local: Any = None
        self._local_lock = threading.Lock()
        self._broadcast: str | None = None  #: key of the payload installed on the workers (large models)
        self._broadcast_if_large()

    def _broadcast_if_large(self) -> None:
        """With an active client and a payload over :data:`INLINE_MAX_BYTES`: install it on every worker."""
        from .cluster import active_client

        client = active_client()
        if client is None:
            return
        self._ensure_payload()
        assert self._payload is not None and self._key is not None
        if self.model.solve_stats:  # a model with inner solves: their records come back here
            _follow_solves(self.model, self._key, client)
        if len(self._payload) > INLINE_MAX_BYTES:
            from ._worker_plugin import register

            register(client, self._key, self._payload)
            self._broadcast = self._key

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
        payload = None if self._broadcast is not None else self._payload
        return {"payload": payload, "broadcast": self._broadcast, "key": self._key, "spec": self.spec,
                "device": self.device, "dtype": self.dtype.str, "batch_size": self.batch_size,
                "fetch_timeout": FETCH_TIMEOUT_S}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model = None
        self._payload = state["payload"]
        self._broadcast = state.get("broadcast")  # the key of the installed payload, or None
        self._key = state["key"]
        self.spec = state["spec"]
        self.fetch_timeout = float(state.get("fetch_timeout", FETCH_TIMEOUT_S))
        self.device = state["device"]
        self.dtype = np.dtype(state["dtype"])
        self.batch_size = state.get("batch_size")
        self._local = None
        self._local_lock = threading.Lock()

    def _fetch_payload(self) -> bytes:
        """The broadcast payload, as the worker plugin installed it (waiting at most ``fetch_timeout`` s).

        Raises
        ------
        ModelFileError
            Not installed on this worker in time (the plugin was unregistered, or the worker cannot
            reach the scheduler).
        """
        from ._worker_plugin import wait_payload

        payload = wait_payload(str(self._broadcast), self.fetch_timeout)
        if payload is None:
            raise ModelFileError(
                f"worker payload {str(self._key)[:12]}: the broadcast model was not installed on "
                f"this worker within {self.fetch_timeout:g} s; run the computation again from the "
                "client")
        return payload

    def __dask_tokenize__(self) -> tuple[str, str, str, str, int]:
        return ("xr_unmix.ModelKernel", self.key, self.device, self.dtype.str, self.batch_size or 0)

    def _resolve(self) -> Any:
        import torch

        device = _check_device(self.device)
        if self.model is None:  # rebuilt from its state: a worker process
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

        from .models.base import collect_solves

        with torch_threads(), torch.inference_mode(), collect_solves() as solves:
            model = self._resolve()
            p = next(model.parameters(), None)
            mdtype = p.dtype if p is not None else torch.float32
            Y = torch.as_tensor(block, dtype=mdtype, device=self.device)
            b, h, w = Y.shape
            n = self.batch_size
            if n and self.spec.pixelwise and h * w > n:
                flat = Y.reshape(b, 1, h * w)  # column slices keep the (bands, pixels) layout
                out = torch.cat([model.unmix_image(flat[:, :, i:i + n])
                                 for i in range(0, h * w, n)], dim=2).reshape(-1, h, w)
            else:
                out = model.unmix_image(Y)
        if solves and self.model is None:  # a worker: report them to the caller (see _on_solves)
            worker = on_distributed_worker()
            if worker is not None:
                worker.log_event(SOLVES_TOPIC, {"key": self._key, "records": solves})
        return out.detach().cpu().numpy().astype(self.dtype, copy=False)
