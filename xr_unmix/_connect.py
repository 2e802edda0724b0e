"""A bounded connection to a Dask scheduler: the TCP connect *and* distributed's handshake.

Used by :func:`xr_unmix.runtime.dask_scheduler`; a port that accepts connections but does not speak
Dask's protocol fails in :data:`CONNECT_TIMEOUT` seconds instead of waiting without limit.
"""

from __future__ import annotations

from typing import Any

from .errors import SchedulerError

#: Seconds :func:`connect_client` waits for a scheduler to answer (the handshake included).
CONNECT_TIMEOUT = 10.0


def probe_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect to ``address`` and complete distributed's handshake within ``timeout`` seconds.

    ``distributed.Client(address, timeout=...)`` bounds the TCP connect but not the handshake read
    that follows it: a port that accepts connections but does not speak Dask's protocol (another
    service, a half-dead scheduler) makes it wait without limit. This probe runs the same connect +
    handshake on a private event loop under :func:`asyncio.wait_for`, so it fails in at most
    ``timeout`` seconds.
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
    _tcp_reachable(address, addr, timeout)

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
        timed_out = t.is_alive() or isinstance(failure[0], asyncio.TimeoutError | TimeoutError)
        why = "timed out" if timed_out else (" ".join(str(failure[0]).split())
                                             or type(failure[0]).__name__)
        raise SchedulerError(f"no Dask scheduler answered at {address} within {timeout:g} s "
                             f"({why}); check the address and that the scheduler is running"
                             ).about("scheduler")


def _tcp_reachable(address: str, addr: str, timeout: float) -> None:
    """Fail at once where nothing listens (distributed's ``connect`` retries a refused connection
    until its timeout)."""
    import socket
    from urllib.parse import urlsplit

    try:
        u = urlsplit(addr)
        host, port = u.hostname, u.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise SchedulerError(f"{address} is not a scheduler address (host:port, e.g. "
                             "tcp://10.0.0.5:8786)").about("scheduler")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise SchedulerError(f"no Dask scheduler answered at {address} ({why}); check the address "
                             "and that the scheduler is running").about("scheduler") from None


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
