"""A STAC item beside a written COG, through ``rio-stac`` (the ``stac`` extra).

:func:`stac_item` reads the COG with rio-stac (``proj``, ``raster`` and ``eo`` extensions: footprint,
CRS, per-band statistics) and names each ``eo:bands`` entry after the product's band -- the endmember
or class name that :func:`xr_unmix.to_cog` wrote as band description and tag -- since odc-stac loads a
multi-band COG by those names. The provenance record (method, parameters, software, date) goes into
the item's properties under ``xr_unmix:``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, MissingInputError

PathLike = str | os.PathLike[str]

#: dataset tags copied into the item's properties (as ``xr_unmix:<tag>``)
PROVENANCE = ("method", "solver", "n_mc", "max_endmembers", "normalization", "seed", "software",
              "input_source", "endmembers", "classes", "date_created")


def _created(tags: dict[str, str]) -> _dt.datetime:
    stamp = tags.get("date_created")
    if stamp:
        try:
            return _dt.datetime.fromisoformat(stamp)
        except ValueError:
            pass
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def stac_item(path: PathLike, *, out: PathLike | None = None, write: bool = True,
              datetime: _dt.datetime | None = None) -> Any:
    """Make (and write) a STAC item for a COG written by xr_unmix.

    Parameters
    ----------
    path : str or path
        The COG (:func:`xr_unmix.to_cog`, :func:`xr_unmix.write_bundles`).
    out : str or path, optional
        Where to write the item (default ``<stem>.json`` beside the COG; the asset href is relative).
    write : bool
        Write the JSON (else only return the item).
    datetime : datetime, optional
        The item's datetime (default the product's ``date_created`` tag).

    Returns
    -------
    pystac.Item
        With ``proj``, ``raster`` and ``eo`` extensions; ``eo:bands`` named by endmember/class.

    Raises
    ------
    MissingInputError
        No file at ``path``.
    InputError
        ``rio-stac`` is not installed (``pip install 'xr-unmix[stac]'``).
    """
    import rasterio

    p = Path(path)
    if not p.is_file():
        raise MissingInputError(f"no COG at {p}")
    try:
        import rio_stac
    except ImportError as exc:
        raise InputError("stac_item needs rio-stac: pip install 'xr-unmix[stac]'") from exc
    with rasterio.open(p) as src:
        tags = src.tags()
        names = [src.tags(i).get("class") if src.tags(i).get("class") and not src.tags(i).get(
            "endmember") else (src.descriptions[i - 1] or f"b{i}") for i in range(1, src.count + 1)]
        props = {f"xr_unmix:{k}": tags[k] for k in PROVENANCE if k in tags}
        item = rio_stac.create_stac_item(
            src, input_datetime=datetime or _created(tags), id=p.stem, asset_name="data",
            asset_href=p.name, asset_roles=["data"], with_proj=True, with_raster=True, with_eo=True,
            properties=props)
    bands = item.assets["data"].extra_fields.get("eo:bands", [])
    for b, name in zip(bands, names, strict=False):
        b["description"] = b.get("description") or name
        b["name"] = str(name)
    if write:
        target = Path(out) if out is not None else p.with_suffix(".json")
        tmp = target.with_name(f".{target.name}.partial")
        tmp.write_text(json.dumps(item.to_dict(), indent=1))
        os.replace(tmp, target)
    return item
