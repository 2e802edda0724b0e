"""Atomic, non-destructive writes: the one helper behind products (COG, Zarr), batch sidecars, reports
and model files.

A write goes to a scratch sibling ``.NAME.partial-<tag>`` and is published by one rename:

- ``overwrite=False``: an exclusive, no-replace rename (Linux ``renameat2(RENAME_NOREPLACE)``; elsewhere
  ``link`` for a file, ``mkdir`` + rename for a directory). A target that another writer created while
  this one computed is never replaced: :class:`~xr_unmix.errors.OutputExistsError`.
- ``overwrite=True``: only something recognisably of the same kind is replaced -- a Zarr store (a
  directory with ``zarr.json`` / ``.zgroup`` / ``.zarray``), a TIFF file (by its magic bytes), or a
  regular file for ``kind="file"``. Anything else (a folder of the user's files, a directory named
  ``x.tif``) is refused with :class:`~xr_unmix.errors.OutputError` naming the path. A directory is
  swapped in atomically (``RENAME_EXCHANGE``) and the old store removed after the swap; a symlink is
  replaced itself (what it points to is left alone).

The tag holds a host hash, the process id and its start time, so a later write of the same target
removes the scratch left by a process that no longer runs (a SIGKILL, a power cut), and never the
scratch of a writer that is still running.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from ..errors import OutputError, OutputExistsError, XrUnmixError

Kind = Literal["cog", "zarr", "file"]
PathLike = str | os.PathLike[str]

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
_KIND_NAME = {"cog": "a GeoTIFF file", "zarr": "a Zarr store", "file": "a regular file"}
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TAG_RE = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-(?P<t>\d+)-[0-9a-f]{6}")

_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_RENAMEAT2: Any = None


# -- scratch names ---------------------------------------------------------------------------------

def scratch_path(path: PathLike, what: str = "partial") -> Path:
    """A scratch sibling of ``path``: ``.NAME.<what>-<host>-<pid>-<start>-<random>``."""
    p = Path(path)
    tag = f"{_HOST}-{os.getpid()}-{int(time.time())}-{uuid.uuid4().hex[:6]}"
    return p.with_name(f".{p.name}.{what}-{tag}")


def _owner_gone(tag: str) -> bool:
    """True if the scratch ``tag`` was made on this host by a process that no longer runs."""
    m = _TAG_RE.match(tag)
    if m is None or m["host"] != _HOST:
        return False  # another machine's (shared file system) or not ours: cannot tell, keep it
    import psutil

    pid, started = int(m["pid"]), int(m["t"])
    try:
        proc = psutil.Process(pid)
        return proc.create_time() > started + 2  # the pid was reused by a younger process
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False


def clean_stale(path: PathLike) -> list[Path]:
    """Remove the ``.NAME.partial-*`` / ``.NAME.old-*`` scratch of dead writers beside ``path``.

    An ``.old-*`` copy is put back at ``path`` instead when ``path`` is missing (a writer killed between
    moving the old output aside and moving the new one in, on a system without ``RENAME_EXCHANGE``).
    Returns the paths removed or restored.
    """
    p = Path(path)
    done: list[Path] = []
    try:
        siblings = list(p.parent.iterdir()) if p.parent.is_dir() else []
    except OSError:
        return done
    for what in ("partial", "old"):
        prefix = f".{p.name}.{what}-"
        for s in siblings:
            if not s.name.startswith(prefix) or not _owner_gone(s.name[len(prefix):]):
                continue
            with contextlib.suppress(OSError):
                if what == "old" and not os.path.lexists(p):
                    os.rename(s, p)
                else:
                    _remove(s)
                done.append(s)
    return done


def _remove(p: Path) -> None:
    """Remove a scratch entry: a link or file is unlinked, a real directory removed with its tree."""
    if os.path.islink(p) or p.is_file():
        p.unlink()
    elif p.is_dir():
        shutil.rmtree(p)


# -- what may be replaced --------------------------------------------------------------------------

def recognised(path: PathLike, kind: Kind) -> bool:
    """True if ``path`` is recognisably a product of ``kind`` (following a symlink)."""
    p = Path(path)
    if kind == "zarr":
        return p.is_dir() and any((p / m).is_file() for m in _ZARR_MARKERS)
    if not p.is_file():
        return False
    if kind == "file":
        return True
    try:
        with open(p, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def check_replaceable(path: Path, kind: Kind) -> None:
    if recognised(path, kind):
        return
    what = ("a directory" if path.is_dir() else "a file that is not a TIFF" if path.is_file()
            else "a broken link" if os.path.islink(path) else "not a regular file")
    raise OutputError(f"refusing to replace {path}: it is {what}, not {_KIND_NAME[kind]} "
                      "(only outputs of the same kind are overwritten); remove it yourself or "
                      "choose another path")


# -- renames ---------------------------------------------------------------------------------------

def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2``; False where the system or file system lacks it (the caller falls back)."""
    global _RENAMEAT2
    if _RENAMEAT2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
            _RENAMEAT2 = fn
        except (OSError, AttributeError):
            _RENAMEAT2 = False
    if not _RENAMEAT2:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), os.fspath(dst))


def _rename_noreplace(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless something is there (then :class:`OutputExistsError`)."""
    try:
        if _renameat2(tmp, path, _RENAME_NOREPLACE):
            return
        if tmp.is_dir():
            os.mkdir(path)  # exclusive claim; renaming a directory onto an empty one replaces it
            os.rename(tmp, path)
        else:
            os.link(tmp, path)  # exclusive; the scratch name is removed by the caller
    except FileExistsError:
        raise OutputExistsError(path, f"{path} was created by another writer while this one ran; "
                                      "it was left as it is") from None


def _publish(tmp: Path, path: Path, overwrite: bool, kind: Kind) -> None:
    if not overwrite or not os.path.lexists(path):
        try:
            _rename_noreplace(tmp, path)
            return
        except OutputExistsError:
            if not overwrite:
                raise
    check_replaceable(path, kind)
    if _renameat2(tmp, path, _RENAME_EXCHANGE):
        # ``tmp`` now holds what was at ``path``: a link is unlinked, a store checked once more
        if not os.path.islink(tmp) and not recognised(tmp, kind):
            _renameat2(tmp, path, _RENAME_EXCHANGE)
            check_replaceable(path, kind)
        _remove(tmp)
        return
    if not tmp.is_dir() and not path.is_dir():
        os.replace(tmp, path)
        return
    old = scratch_path(path, "old")
    os.rename(path, old)
    os.rename(tmp, path)
    _remove(old)


# -- the writer's context --------------------------------------------------------------------------

def describe(exc: BaseException) -> str:
    """One line from an exception and its causes (GDAL's detail, which names the file, is a cause)."""
    parts: list[str] = []
    e: BaseException | None = exc
    while e is not None and len(parts) < 6:
        msg = " ".join(str(e).split())
        if msg and not any(msg in p for p in parts):
            parts.append(msg)
        e = e.__cause__ or e.__context__
    return "; ".join(parts) or type(exc).__name__


@contextlib.contextmanager
def atomic_target(path: PathLike, *, overwrite: bool = False, kind: Kind = "file") -> Iterator[Path]:
    """Yield a scratch path to write ``path``'s content to; publish it only if the block succeeds.

    Checks before the block (so that nothing is computed for a write that cannot happen): an existing
    ``path`` without ``overwrite`` (:class:`OutputExistsError`), an existing ``path`` that is not of
    ``kind`` or a directory that is not writable (:class:`OutputError`). An :class:`OSError` inside the
    block or at the rename (disk full, a corrupt input tile, ...) becomes an :class:`OutputError` that
    names ``path`` and keeps the causes' detail. The scratch is removed in every case.
    """
    path = Path(path)
    clean_stale(path)
    if os.path.lexists(path):
        if not overwrite:
            raise OutputExistsError(path)
        check_replaceable(path, kind)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder of {path}: {describe(exc)}") from exc
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: the folder {path.parent} is not writable")
    tmp = scratch_path(path)
    try:
        yield tmp
        _publish(tmp, path, overwrite, kind)
    except XrUnmixError:
        raise
    except OSError as exc:
        raise OutputError(f"writing {path} failed: {describe(exc)}") from exc
    finally:
        with contextlib.suppress(OSError):
            if os.path.lexists(tmp):
                _remove(tmp)


def write_bytes(path: PathLike, data: bytes, *, overwrite: bool = True, kind: Kind = "file") -> Path:
    """Write ``data`` to ``path`` atomically (scratch file, fsync, rename); see :func:`atomic_target`."""
    with atomic_target(path, overwrite=overwrite, kind=kind) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json(path: PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically (``default=str`` for paths, dates)."""
    return write_bytes(path, json.dumps(obj, indent=2, default=str).encode(), overwrite=overwrite)
