"""Blind unmixing of Jasper Ridge: HySime, VCA (several seeds), Hungarian matching, FCLS, library labels.

    .venv/bin/python recipes/jasper_vca.py              # the Jasper table (markdown) + a figure
    .venv/bin/python recipes/jasper_vca.py --memory     # peak memory of VCA on a Dask cube 12x a chunk

Data (first mode only): read at run time from ``../shared/data/jasper_ridge`` (or ``$XR_UNMIX_DATA``)
through :func:`xr_unmix.datasets.load_jasper_ridge`; nothing of the data set is in this file or the
repository. The figure it writes (docs/figures/endmembers_jasper.png) is not committed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIG = ROOT / "docs" / "figures" / "endmembers_jasper.png"


def jasper(seeds: list[int], sample: int | None) -> None:
    import xr_unmix  # noqa: F401
    from xr_unmix.datasets import load_jasper_ridge
    from xr_unmix.library import identify
    from xr_unmix.metrics import match, rmse

    cube, E_ref, A_ref = load_jasper_ridge()
    names = list(E_ref.endmember.values)
    t = time.perf_counter()
    k = cube.unmix.n_endmembers()
    print(f"HySime estimate on Jasper Ridge: {k} (reference: 4), {time.perf_counter() - t:.2f} s\n")

    print(f"VCA n=4{'' if sample is None else f', sample={sample}'}: SAD (rad) per endmember after "
          "Hungarian matching, FCLS aRMSE vs the reference abundances\n")
    print("| seed | " + " | ".join(names) + " | mean SAD | aRMSE (FCLS) | VCA s | FCLS s |")
    print("|---" * (len(names) + 5) + "|")
    rows = []
    for s in seeds:
        t0 = time.perf_counter()
        E = cube.unmix.endmembers(4, seed=s, sample=sample)
        t1 = time.perf_counter()
        m = match(E, E_ref)
        A = cube.unmix.fcls(E)
        A = A.compute() if A.chunks else A
        t2 = time.perf_counter()
        a = rmse(m.reorder_abundances(A), A_ref)
        rows.append((s, m, a, E))
        print(f"| {s} | " + " | ".join(f"{v:.3f}" for v in m.sad) +
              f" | {m.mean_sad:.3f} | {a:.3f} | {t1 - t0:.2f} | {t2 - t1:.1f} |")
    sads = np.array([r[1].sad for r in rows])
    ar = np.array([r[2] for r in rows])
    print("| median | " + " | ".join(f"{v:.3f}" for v in np.median(sads, 0)) +
          f" | {np.median(sads.mean(1)):.3f} | {np.median(ar):.3f} | | |")
    print("| worst | " + " | ".join(f"{v:.3f}" for v in sads.max(0)) +
          f" | {sads.mean(1).max():.3f} | {ar.max():.3f} | | |")
    # FCLS with the reference endmembers, for scale
    A0 = cube.unmix.fcls(E_ref)
    print(f"\nFCLS with the reference endmembers: aRMSE {rmse(A0, A_ref):.3f}")
    print(f"projection used: {rows[0][3].attrs['projection']}, estimated SNR "
          f"{rows[0][3].attrs['snr_db']:.1f} dB")

    # library labels of the seed-0 endmembers, in reference order
    s0, m0, _, E0 = rows[0]
    ordered = m0.reorder_endmembers(E0)
    ds = identify(ordered, ["usgs", "earthlib"], k=1)
    print(f"\nClosest library spectrum (USGS 1995 pruned 10 deg + earthlib 313), seed {s0}:\n")
    print("| reference | VCA endmember | pixel (row, col) | library | spectrum | class | SAD (rad) |")
    print("|---|---|---|---|---|---|---|")
    for j, ref in enumerate(names):
        b = ds.isel(endmember=j, rank=0)
        print(f"| {ref} | {ordered.estimated_name.values[j]} | ({int(ordered.pixel_row[j])}, "
              f"{int(ordered.pixel_col[j])}) | {b.library.item()} | {b.name.item()} | "
              f"{b.material.item()} | {float(b.sad):.3f} |")
    if sample is None:
        _figure(E_ref, ordered, m0)


def _figure(E_ref, ordered, m) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wl = E_ref.wavelength.values
    order = np.argsort(wl)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2), sharex=True)
    for j, ax in enumerate(axes):
        ax.plot(wl[order], E_ref.values[order, j], "k-", lw=1.5, label="reference")
        ax.plot(wl[order], ordered.values[order, j], "C1--", lw=1.2,
                label=f"VCA ({ordered.estimated_name.values[j]})")
        ax.set_title(f"{E_ref.endmember.values[j]}: SAD {m.sad[j]:.3f} rad")
        ax.set_xlabel("wavelength (nm)")
    axes[0].set_ylabel("reflectance")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    FIG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIG, dpi=110)
    print(f"\nfigure: {FIG.relative_to(ROOT)}")


# -- peak memory on a Dask cube ---------------------------------------------------------------------

BANDS, H, W, CH = 100, 2000, 1500, 500  # 1.2 GB float32 cube, 100 MB chunks: 4 x 3 = 12 chunks


def _synthetic_dask():  # noqa: ANN202
    """A lazy (band, y, x) cube of mixtures of 5 smooth spectra, generated block by block (seeded)."""
    import dask.array as da
    import xarray as xr

    rng = np.random.default_rng(0)
    wl = np.linspace(0, 1, BANDS)
    E = 0.05 + sum(rng.uniform(0.2, 1, (1, 5)) *
                   np.exp(-((wl[:, None] - rng.uniform(0, 1, (1, 5))) ** 2) / 0.01) for _ in range(3))

    E32 = E.astype(np.float32)

    def block(block_info=None):  # noqa: ANN001, ANN202
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        r = np.random.default_rng([y0, x0])
        n = (y1 - y0) * (x1 - x0)
        A = r.dirichlet(np.full(5, 0.5), size=n).T.astype(np.float32)
        if (y0, x0) == (0, 0):
            A[:, :5] = np.eye(5)  # pure pixels, all in the first chunk
        Y = E32 @ A
        for b in range(0, BANDS, 10):  # noise in slices: the generator holds ~1 chunk per task
            Y[b:b + 10] += 0.01 * r.standard_normal((min(10, BANDS - b), n), dtype=np.float32)
        return Y.reshape(BANDS, y1 - y0, x1 - x0)

    arr = da.map_blocks(block, chunks=((BANDS,), (CH,) * (H // CH), (CH,) * (W // CH)),
                        dtype=np.float32)
    return xr.DataArray(arr, dims=("band", "y", "x"))


class _PeakRSS:
    """Samples this process's resident set size every 5 ms in a thread; ``peak`` in MiB."""

    def __init__(self) -> None:
        import threading

        import psutil

        self._p = psutil.Process()
        self.start = self.peak = self._p.memory_info().rss / 2**20
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._p.memory_info().rss / 2**20)
            self._stop.wait(0.005)

    def __enter__(self) -> _PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._p.memory_info().rss / 2**20)


def _measure(mode: str) -> None:
    """Child process: one extraction, then print JSON with the RSS before and the peak (MiB)."""
    import dask

    import xr_unmix  # noqa: F401
    import xr_unmix.extraction as ex

    cube = _synthetic_dask()
    if mode == "numpy":
        cube = cube.compute()
    if mode == "dask-streaming":
        ex._vca._CACHE_BYTES = 0  # force one pass per endmember (what a scene beyond the cache does)
    with dask.config.set(scheduler="threads", num_workers=2), _PeakRSS() as rss:
        t = time.perf_counter()
        E = ex.extract_endmembers(cube, 5, seed=0)
        dt = time.perf_counter() - t
    print(json.dumps({"mode": mode, "seconds": dt, "rss_before_mib": rss.start,
                      "rss_peak_mib": rss.peak, "rows": E.pixel_row.values.tolist(),
                      "cols": E.pixel_col.values.tolist(), "E": E.values.tolist()}))


def memory() -> None:
    cube_mib = BANDS * H * W * 4 / 2**20
    chunk_mib = BANDS * CH * CH * 4 / 2**20
    print(f"cube {BANDS} x {H} x {W} float32 = {cube_mib:.0f} MiB, chunks {chunk_mib:.0f} MiB "
          f"({(H // CH) * (W // CH)} chunks); VCA n=5, seed 0, all valid pixels\n")
    out = {}
    for mode in ("dask", "dask-streaming", "numpy"):
        res = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True,
                             text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
        o = out[mode]
        print(f"{mode:14s}: {o['seconds']:.1f} s, peak RSS {o['rss_peak_mib']:.0f} MiB "
              f"(before the call: {o['rss_before_mib']:.0f} MiB; growth "
              f"{o['rss_peak_mib'] - o['rss_before_mib']:.0f} MiB = "
              f"{(o['rss_peak_mib'] - o['rss_before_mib']) / chunk_mib:.1f} chunks)")
    for mode in ("dask", "dask-streaming"):
        same = (out[mode]["rows"] == out["numpy"]["rows"]) and (out[mode]["cols"] == out["numpy"]["cols"])
        diff = np.abs(np.array(out[mode]["E"]) - np.array(out["numpy"]["E"])).max()
        print(f"same pixels {mode} vs numpy: {same}; max |E_{mode} - E_numpy| = {diff:.2e}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--sample", type=int, default=None)
    p.add_argument("--memory", action="store_true")
    p.add_argument("--child", choices=["dask", "dask-streaming", "numpy"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        _measure(a.child)
    elif a.memory:
        memory()
    else:
        jasper(a.seeds, a.sample)
