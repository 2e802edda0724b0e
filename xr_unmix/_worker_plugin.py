"""Large model payloads on ``distributed`` workers: a worker plugin, so that restarted workers get them too.

A payload over :data:`xr_unmix._workers.INLINE_MAX_BYTES` does not travel inside every task. The client
registers a :class:`PayloadPlugin` holding the model bytes (keyed by their SHA-256); the scheduler keeps
registered plugins and runs their ``setup`` on every worker, including one that joins or restarts later
(scattered data, by contrast, is lost with the last worker holding a replica, and the scheduler's memory
manager keeps as few replicas as it can). Tasks carry only the key and look the bytes up here.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

#: payloads installed in this worker process, by SHA-256
_PAYLOADS: dict[str, bytes] = {}
_READY = threading.Condition()


class PayloadPlugin(WorkerPlugin):
    """Installs one model payload (bytes, with its SHA-256 ``key``) on every worker."""

    def __init__(self, key: str, payload: bytes) -> None:
        self.key = key
        self.payload = payload
        self.name = plugin_name(key)

    def setup(self, worker: Any) -> None:
        with _READY:
            _PAYLOADS[self.key] = self.payload
            _READY.notify_all()

    def teardown(self, worker: Any) -> None:
        with _READY:
            _PAYLOADS.pop(self.key, None)


def plugin_name(key: str) -> str:
    """The plugin's name on the scheduler (one per model content)."""
    return f"xr_unmix-model-{key[:32]}"


def register(client: Any, key: str, payload: bytes) -> str:
    """Register the payload on ``client``'s cluster (idempotent per key); returns the plugin name."""
    client.register_plugin(PayloadPlugin(key, payload), name=plugin_name(key))
    return plugin_name(key)


def wait_payload(key: str, timeout: float) -> bytes | None:
    """This worker's copy of the payload ``key``, waiting at most ``timeout`` s; ``None`` if absent."""
    deadline = time.monotonic() + max(float(timeout), 0.0)
    with _READY:
        while key not in _PAYLOADS:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            _READY.wait(left)
        return _PAYLOADS[key]
