"""Which scenes a batch runs: scene specs expanded (paths, globs, ``@list`` files), output stems that
stay the same from run to run, and the fingerprints that resume compares (:mod:`xr_unmix.batch`)."""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError
from .io.paths import is_local_path

PathLike = str | os.PathLike[str]

_GLOB_CHARS = set("*?[")


def expand_scenes(specs: Iterable[PathLike]) -> tuple[list[Path], list[str]]:
    """Expand scene specifications into a de-duplicated, ordered list of paths.

    Parameters
    ----------
    specs : iterable of str or path
        Each one a path, a glob pattern (``*``, ``?``, ``[..]``, ``**`` recursive; matches sorted), or
        ``@FILE``: a text file with one path or pattern per line (blank lines and ``#`` comments
        ignored; relative entries are taken relative to the current directory if they exist there,
        else relative to the list file's directory).

    Returns
    -------
    scenes : list of Path
        In the order given; a path named twice is kept once. Plain paths are kept even if they do not
        exist (the scene then fails, reported, without stopping the batch).
    unmatched : list of str
        Patterns or list files that produced nothing (reported as failures by :func:`run_batch`).

    Raises
    ------
    InputError
        A spec (or a line of a list file) is a GDAL / fsspec path (``/vsizip/...``, ``NETCDF:...``,
        ``s3://...``): it cannot be globbed, nor fingerprinted for resume.
    """
    out: list[Path] = []
    unmatched: list[str] = []
    seen: set[str] = set()

    def add(p: Path) -> int:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
        return 1

    def one(spec: str, base: Path | None) -> int:
        """Add what ``spec`` names; return how many paths it named (duplicates included)."""
        spec = spec.strip()
        if not spec:
            return 0
        if not is_local_path(spec.lstrip("@")):
            raise InputError(
                f"scene {spec}: a GDAL/fsspec path (/vsi..., DRIVER:..., scheme://) cannot be globbed "
                "or fingerprinted for resume; a batch takes local files, globs and @lists (unmix a "
                "remote scene on its own with the run command or xr_unmix.open_cube)")
        if spec.startswith("@"):
            lst = Path(spec[1:])
            if base is not None and not lst.is_absolute() and not lst.exists():
                lst = base / lst
            n = 0
            if lst.is_file():
                for line in lst.read_text().splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        n += one(line, lst.parent)
            if n == 0:
                unmatched.append(spec)
            return n
        cand = Path(spec)
        if base is not None and not cand.is_absolute() and not cand.exists() and (
                (base / spec).exists() or glob.glob(str(base / spec))):
            cand = base / spec
        if _GLOB_CHARS & set(spec):
            hits = [Path(h) for h in sorted(glob.glob(str(cand), recursive=True))
                    if Path(h).is_file()]
            if not hits:
                unmatched.append(spec)
            return sum(add(h) for h in hits)
        return add(cand)

    for s in specs:
        one(os.fspath(s), None)
    return out, unmatched


def output_stems(scenes: Sequence[Path]) -> list[str]:
    """File stems of the outputs, one per scene: the scene's stem, made unique when two collide.

    A colliding stem gets ``__`` and 8 hex digits of the SHA-1 of the absolute path appended, so the
    name is the same on every run (resume relies on it).
    """
    stems = [p.name.split(".")[0] or p.name for p in scenes]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else
            f"{s}__{hashlib.sha1(os.path.abspath(p).encode()).hexdigest()[:8]}"
            for s, p in zip(stems, scenes, strict=True)]


def file_sha256(path: PathLike | None) -> str | None:
    """SHA-256 (hex) of a file's bytes, or ``None`` when ``path`` is not a file (``vca:N``)."""
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def scene_fingerprint(scene: Path) -> dict[str, Any]:
    """What resume compares of a scene file: absolute path, size (bytes) and mtime (ns)."""
    st = scene.stat()
    return {"path": os.path.abspath(scene), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
