"""Small files laid out as real sensor products, for the reader tests (and for trying the readers).

Each writer makes a scene from three smooth synthetic endmember spectra (:func:`spectra`, defined at
any wavelength) and known abundances, stores it as the product stores reflectance, and returns the
path with the truth. Layouts followed:

- ENVI: a BSQ ``int16`` image + ``.hdr`` with ``wavelength units = Micrometers``, ``fwhm``, ``bbl``,
  ``data ignore value = -9999``, ``reflectance scale factor = 10000``, ``map info`` (UTM 11N);
- EMIT L2A RFL V001 NetCDF-4: root ``reflectance (downtrack, crosstrack, bands)`` float32,
  ``_FillValue`` -9999, global ``geotransform`` / ``spatial_ref``; groups ``sensor_band_parameters``
  (``wavelengths``, ``fwhm``, ``good_wavelengths``: 285 bands, 41 bad, holding -0.01) and
  ``location`` (``glt_x``/``glt_y`` 1-based, 0 = none, ``lat``/``lon``/``elev``);
- EnMAP L2A (processor v01.03+): ``...-SPECTRAL_IMAGE.TIF`` ``int16`` 224 bands (91 VNIR + 133 SWIR,
  overlapping at 902-993 nm), no-data -32768, and ``...-METADATA.XML`` with
  ``level_X/specific/bandCharacterisation/bandID`` (wavelength, FWHM, gain 1e-4, offset 0).
- PRISMA L2D (HDF-EOS5 ``.he5``): ``HDFEOS/SWATHS/PRS_L2D_HCO/Data Fields/VNIR_Cube`` (66 bands) and
  ``SWIR_Cube`` (173) ``uint16`` stored ``(rows, bands, cols)``; root attributes ``List_Cw_*`` /
  ``List_Fwhm_*`` / ``List_Cw_*_Flags`` in descending wavelength with not-acquired bands at 0.0 nm,
  ``L2Scale*Min``/``Max`` (``value = Min + DN (Max - Min) / 65535``), ``Epsg_Code`` and the
  corner-pixel centres ``Product_*corner_easting``/``_northing``; DN 0 outside the swath;
- EMIT L2A MASK V001 NetCDF-4: root ``mask (downtrack, crosstrack, bands)`` float32 with the
  ``sensor_band_parameters/mask_bands`` names (Cloud flag, Cirrus flag, Water flag, Spacecraft Flag,
  Dilated Cloud Flag, AOD550, H2O (g cm-2), Aggregate Flag), on the swath of its L2A RFL granule.

Run as a script to write them all into a folder: ``python tests/io/make_product_fixtures.py OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

NAMES = ["soil", "vegetation", "npv"]
ENVI_NAME = "scene_rfl"
EMIT_NAME = "EMIT_L2A_RFL_001_20240101T000000_2400001_001.nc"
ENMAP_STEM = "ENMAP01-____L2A-DT0000000001_20240101T000000Z_001_V010400_20240102T000000Z"


def spectra(wavelength_nm) -> np.ndarray:
    """Three smooth reflectance spectra (soil, vegetation, npv) at ``wavelength_nm``: (B, 3)."""
    w = np.asarray(wavelength_nm, dtype=np.float64) / 1000.0  # um
    soil = 0.12 + 0.18 * w / 2.5
    veg = 0.04 + 0.42 / (1.0 + np.exp(-(w - 0.72) * 40.0)) * np.exp(-((w - 0.72) / 1.6) ** 2)
    npv = 0.18 + 0.12 * np.sin(w * 2.2) + 0.05 * np.exp(-((w - 2.1) / 0.05) ** 2)
    return np.stack([soil, veg, npv], axis=1)


def endmembers(cube):
    """The three spectra at the cube's wavelengths as a ``(band, endmember)`` DataArray."""
    import xarray as xr

    wl = np.asarray(cube.wavelength.values)
    return xr.DataArray(spectra(wl), dims=("band", "endmember"),
                        coords={"endmember": NAMES, "wavelength": ("band", wl)})


def abundances(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random abundances on the simplex, (3, h, w)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet([1.0, 1.0, 1.0], size=(h, w)).transpose(2, 0, 1)


def _mix(wl: np.ndarray, A: np.ndarray) -> np.ndarray:
    return np.einsum("br,ryx->byx", spectra(wl), A)


# -- ENVI ---------------------------------------------------------------------------------------------

def write_envi(folder: Path, *, h: int = 9, w: int = 11, seed: int = 1, rotation: float = 0.0) -> dict:
    """ENVI BSQ int16 reflectance x 10000; bbl marks 3 bands bad (they hold junk); pixel (0, 0) is
    ``data ignore value``. ``rotation`` (degrees) writes a rotated ``map info``, as AVIRIS grids are."""
    folder = Path(folder)
    wl = np.linspace(400.0, 2400.0, 40)
    A = abundances(h, w, seed)
    refl = _mix(wl, A)
    bbl = np.ones(wl.size, dtype=int)
    bbl[[14, 15, 27]] = 0
    dn = np.round(refl * 10000).astype("<i2")
    dn[bbl == 0] = 31000  # junk in the bad bands
    dn[:, 0, 0] = -9999
    dn.tofile(folder / f"{ENVI_NAME}.img")
    lst = lambda v: "{" + ", ".join(v) + "}"
    (folder / f"{ENVI_NAME}.hdr").write_text(
        "ENVI\ndescription = {synthetic reflectance}\n"
        f"samples = {w}\nlines = {h}\nbands = {wl.size}\nheader offset = 0\n"
        "file type = ENVI Standard\ndata type = 2\ninterleave = bsq\nbyte order = 0\n"
        "map info = {UTM, 1.000, 1.000, 500000.000, 4100000.000, 30.0, 30.0, 11, North, WGS-84, "
        f"units=Meters{f', rotation={rotation}' if rotation else ''}}}\n"
        "wavelength units = Micrometers\n"
        f"wavelength = {lst(f'{v / 1000:.5f}' for v in wl)}\n"
        f"fwhm = {lst('0.01000' for _ in wl)}\n"
        f"bbl = {lst(str(v) for v in bbl)}\n"
        "data ignore value = -9999\nreflectance scale factor = 10000\n")
    return {"path": folder / f"{ENVI_NAME}.img", "abundance": A, "wavelength": wl, "bbl": bbl != 0,
            "transform": (30.0, 0.0, 500000.0, 0.0, -30.0, 4100000.0), "epsg": 32611}


# -- EMIT ---------------------------------------------------------------------------------------------

def emit_bands() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """285 EMIT-like band centres (381-2493 nm), FWHM, and good flags (41 bad in the water bands)."""
    wl = np.linspace(381.0, 2493.0, 285)
    fwhm = np.full(wl.size, 8.5)
    bad = np.flatnonzero(((wl > 1320) & (wl < 1450)) | ((wl > 1770) & (wl < 1965)))
    good = np.ones(wl.size, dtype=np.uint8)
    good[bad[:41]] = 0
    return wl, fwhm, good


def write_emit(folder: Path, *, ny: int = 10, nx: int = 8, glt: bool = True, seed: int = 2) -> dict:
    """An EMIT L2A RFL granule. The ortho grid is ``(ny, nx)``; the swath is its transpose, flipped
    (``downtrack = x``, ``crosstrack = ny-1-y``), as a swath crossing the grid at an angle; the GLT
    names that pixel (1-based), and 0 in the corner ortho pixels (3 of them), which no swath pixel
    fills. Swath pixel (1, 2) is the fill value; bad bands hold -0.01."""
    import xarray as xr

    folder = Path(folder)
    wl, fwhm, good = emit_bands()
    A = abundances(ny, nx, seed)
    ortho = _mix(wl, A).astype(np.float32)  # (B, ny, nx)
    ndown, ncross = nx, ny
    swath = np.empty((ndown, ncross, wl.size), dtype=np.float32)
    glt_x = np.zeros((ny, nx), dtype=np.int32)
    glt_y = np.zeros((ny, nx), dtype=np.int32)
    for i in range(ny):
        for j in range(nx):
            d, c = j, ny - 1 - i
            swath[d, c] = ortho[:, i, j]
            glt_y[i, j], glt_x[i, j] = d + 1, c + 1
    for i, j in ((0, 0), (0, 1), (ny - 1, nx - 1)):
        glt_x[i, j] = glt_y[i, j] = 0
    swath[:, :, good == 0] = -0.01
    swath[1, 2, :] = -9999.0
    gt = [-118.0, 0.000542, 0.0, 34.0, 0.0, -0.000542]
    wkt = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG",'
           '"7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT['
           '"degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS['
           '"Longitude",EAST],AUTHORITY["EPSG","4326"]]')
    path = folder / EMIT_NAME
    root = xr.Dataset(
        {"reflectance": (("downtrack", "crosstrack", "bands"), swath,
                         {"long_name": "Surface Reflectance", "units": "unitless"})},
        attrs={"title": "EMIT L2A Surface Reflectance 60 m V001", "geotransform": np.array(gt),
               "spatial_ref": wkt, "summary": "synthetic fixture"})
    root.to_netcdf(path, engine="h5netcdf",
                   encoding={"reflectance": {"_FillValue": np.float32(-9999.0)}})
    xr.Dataset({"wavelengths": ("bands", wl.astype(np.float32), {"units": "nm"}),
                "fwhm": ("bands", fwhm.astype(np.float32), {"units": "nm"}),
                "good_wavelengths": ("bands", good)}).to_netcdf(
        path, engine="h5netcdf", group="sensor_band_parameters", mode="a")
    dd, cc = np.meshgrid(np.arange(ndown), np.arange(ncross), indexing="ij")
    lat = (gt[3] + (ncross - 1 - cc + 0.5) * gt[5]).astype(np.float64)
    lon = (gt[0] + (dd + 0.5) * gt[1]).astype(np.float64)
    loc = {"lat": (("downtrack", "crosstrack"), lat, {"units": "degrees_north"}),
           "lon": (("downtrack", "crosstrack"), lon, {"units": "degrees_east"}),
           "elev": (("downtrack", "crosstrack"), np.full(lat.shape, 250.0, np.float32))}
    if glt:
        loc["glt_x"] = (("ortho_y", "ortho_x"), glt_x)
        loc["glt_y"] = (("ortho_y", "ortho_x"), glt_y)
    xr.Dataset(loc).to_netcdf(path, engine="h5netcdf", group="location", mode="a")
    return {"path": path, "abundance": A, "glt_x": glt_x, "glt_y": glt_y, "good": good != 0,
            "geotransform": gt, "wavelength": wl}


# -- EnMAP --------------------------------------------------------------------------------------------

def enmap_bands() -> tuple[np.ndarray, np.ndarray]:
    """224 EnMAP-like band centres in file order (91 VNIR 418-993 nm, 133 SWIR 902-2445 nm)."""
    wl = np.concatenate([np.linspace(418.0, 993.0, 91), np.linspace(902.0, 2445.0, 133)])
    fwhm = np.concatenate([np.full(91, 6.5), np.full(133, 10.0)])
    return wl, fwhm


def write_enmap(folder: Path, *, h: int = 8, w: int = 12, xml_bands: int | None = None,
                seed: int = 3) -> dict:
    """An EnMAP L2A image + XML. Bands 130 and 131 (1-based 131, 132) are no-data everywhere (L2A
    fills its bad bands so); pixel (2, 3) is no-data in every band. ``xml_bands`` writes an XML with
    that many bands (a mismatch)."""
    import rasterio
    from rasterio.transform import from_origin

    folder = Path(folder)
    wl, fwhm = enmap_bands()
    A = abundances(h, w, seed)
    dn = np.round(_mix(wl, A) * 10000).astype(np.int16)
    dn[[130, 131]] = -32768
    dn[:, 2, 3] = -32768
    image = folder / f"{ENMAP_STEM}-SPECTRAL_IMAGE.TIF"
    transform = from_origin(380000.0, 5820000.0, 30.0, 30.0)
    with rasterio.open(image, "w", driver="GTiff", width=w, height=h, count=wl.size, dtype="int16",
                       crs="EPSG:32633", transform=transform, nodata=-32768) as dst:
        dst.write(dn)
    n = wl.size if xml_bands is None else xml_bands
    band_xml = "".join(
        f'<bandID number="{i + 1}"><wavelengthCenterOfBand>{wl[i % wl.size]:.2f}'
        f"</wavelengthCenterOfBand><FWHMOfBand>{fwhm[i % wl.size]:.2f}</FWHMOfBand>"
        "<GainOfBand>1.0E-4</GainOfBand><OffsetOfBand>0.0</OffsetOfBand></bandID>"
        for i in range(n))
    (folder / f"{ENMAP_STEM}-METADATA.XML").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><level_X><metadata><schema><processingLevel>L2A'
        "</processingLevel></schema></metadata><specific><numberOfVNIRBands>91</numberOfVNIRBands>"
        f"<numberOfSWIRBands>133</numberOfSWIRBands><bandCharacterisation>{band_xml}"
        "</bandCharacterisation></specific></level_X>")
    return {"path": image, "abundance": A, "wavelength": wl, "transform": tuple(transform)[:6],
            "epsg": 32633, "bad": [130, 131]}


# -- PRISMA -------------------------------------------------------------------------------------------

PRISMA_NAME = "PRS_L2D_STD_20240101100000_20240101100004_0001.he5"


def prisma_bands() -> dict[str, np.ndarray]:
    """PRISMA-like band tables in file order (descending): VNIR 66 bands (the first 3 at 0.0 nm, not
    acquired), SWIR 173 (the last 2 at 0.0 nm); the two overlap at ~935-980 nm."""
    vnir = np.concatenate([np.zeros(3), np.linspace(978.0, 402.0, 63)])
    swir = np.concatenate([np.linspace(2497.0, 935.0, 171), np.zeros(2)])
    return {"Vnir": vnir, "Swir": swir}


def write_prisma(folder: Path, *, h: int = 9, w: int = 12, seed: int = 4, level: str = "2D") -> dict:
    """A PRISMA L2D granule: the scene on a UTM 33N 30 m grid, DN 0 in the three corner pixels the
    swath does not reach (the north-up grid's padding). VNIR scale 0..1, SWIR 0..0.8."""
    import h5py

    folder = Path(folder)
    A = abundances(h, w, seed)
    cw = prisma_bands()
    scale = {"Vnir": (0.0, 1.0), "Swir": (0.0, 0.8)}
    ul = (400015.0, 4600015.0)  # the centre of the upper-left pixel
    path = folder / PRISMA_NAME
    pad = [(0, 0), (0, 1), (h - 1, w - 1)]
    with h5py.File(path, "w") as f:
        f.attrs["Processing_Level"] = np.bytes_(level)
        f.attrs["Product_ID"] = np.bytes_(f"PRS_L{level}_STD")
        f.attrs["Epsg_Code"] = np.int32(32633)
        f.attrs["Product_ULcorner_easting"] = ul[0]
        f.attrs["Product_ULcorner_northing"] = ul[1]
        f.attrs["Product_LRcorner_easting"] = ul[0] + 30.0 * (w - 1)
        f.attrs["Product_LRcorner_northing"] = ul[1] - 30.0 * (h - 1)
        f.attrs["Product_LLcorner_easting"] = ul[0]
        f.attrs["Product_LLcorner_northing"] = ul[1] - 30.0 * (h - 1)
        f.attrs["Product_URcorner_easting"] = ul[0] + 30.0 * (w - 1)
        f.attrs["Product_URcorner_northing"] = ul[1]
        swath = f.create_group(f"HDFEOS/SWATHS/PRS_L{level}_HCO")
        fields = swath.create_group("Data Fields")
        for arm, wl in cw.items():
            lo, hi = scale[arm]
            f.attrs[f"List_Cw_{arm}"] = wl.astype(np.float32)
            f.attrs[f"List_Fwhm_{arm}"] = np.where(wl > 0, 10.0, 0.0).astype(np.float32)
            f.attrs[f"List_Cw_{arm}_Flags"] = (wl > 0).astype(np.int8)
            f.attrs[f"L2Scale{arm}Min"] = lo
            f.attrs[f"L2Scale{arm}Max"] = hi
            refl = _mix(np.where(wl > 0, wl, 1000.0), A)  # (bands, h, w)
            dn = np.clip(np.round((refl - lo) / (hi - lo) * 65535), 1, 65535).astype(np.uint16)
            dn[wl == 0] = 0
            for i, j in pad:
                dn[:, i, j] = 0
            fields.create_dataset(f"{arm.upper()}_Cube", data=dn.transpose(1, 0, 2))  # rows, bands, cols
        geo = swath.create_group("Geolocation Fields")
        geo.create_dataset("Latitude", data=np.linspace(41.5, 41.4, h * w, dtype=np.float32).reshape(h, w))
        geo.create_dataset("Longitude", data=np.linspace(13.8, 13.9, h * w, dtype=np.float32).reshape(h, w))
    transform = (30.0, 0.0, ul[0] - 15.0, 0.0, -30.0, ul[1] + 15.0)
    return {"path": path, "abundance": A, "bands": cw, "pad": pad, "transform": transform,
            "epsg": 32633}


# -- EMIT L2A MASK -------------------------------------------------------------------------------------

EMIT_MASK_NAME = "EMIT_L2A_MASK_001_20240101T000000_2400001_001.nc"
MASK_BANDS = ["Cloud flag", "Cirrus flag", "Water flag", "Spacecraft Flag", "Dilated Cloud Flag",
              "AOD550", "H2O (g cm-2)", "Aggregate Flag"]


def write_emit_mask(folder: Path, *, nd: int = 8, nc: int = 10, flags: dict | None = None) -> dict:
    """An EMIT L2A MASK granule on the swath of :func:`write_emit` (``nd`` downtrack x ``nc``
    crosstrack). ``flags`` maps a mask band name to the swath pixels ``[(d, c), ...]`` set to 1; the
    aggregate flag is 1 where any of the five flags is or AOD550 exceeds 0.5 (swath pixel (6, 6)
    here), as emit-sds's L2A mask code makes it."""
    import xarray as xr

    folder = Path(folder)
    flags = {"Cloud flag": [(0, 0)], "Cirrus flag": [(2, 3)], "Water flag": [(4, 4)],
             "Spacecraft Flag": [(5, 1)], "Dilated Cloud Flag": [(0, 1)]} if flags is None else flags
    m = np.zeros((nd, nc, len(MASK_BANDS)), dtype=np.float32)
    m[:, :, MASK_BANDS.index("AOD550")] = 0.08
    m[:, :, MASK_BANDS.index("H2O (g cm-2)")] = 1.3
    for name, pixels in flags.items():
        for d, c in pixels:
            m[d, c, MASK_BANDS.index(name)] = 1.0
    if nd > 6 and nc > 6:
        m[6, 6, MASK_BANDS.index("AOD550")] = 0.9
    m[:, :, MASK_BANDS.index("Aggregate Flag")] = (m[:, :, :5] > 0).any(axis=2) | (
        m[:, :, MASK_BANDS.index("AOD550")] > 0.5)
    path = folder / EMIT_MASK_NAME
    xr.Dataset({"mask": (("downtrack", "crosstrack", "bands"), m,
                         {"long_name": "Masks"})},
               attrs={"title": "EMIT L2A Mask 60 m V001"}).to_netcdf(
        path, engine="h5netcdf", encoding={"mask": {"_FillValue": np.float32(-9999.0)}})
    xr.Dataset({"mask_bands": ("bands", np.array(MASK_BANDS, dtype=object))}).to_netcdf(
        path, engine="h5netcdf", group="sensor_band_parameters", mode="a")
    return {"path": path, "flags": flags, "mask": m}


#: every writer, in the order the script runs them (the guide's tests write all of them too)
WRITERS = (write_envi, write_emit, write_enmap, write_prisma, write_emit_mask)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "product_fixtures")
    out.mkdir(parents=True, exist_ok=True)
    for fn in WRITERS:
        print(fn(out)["path"])
