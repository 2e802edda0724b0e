"""``xr-unmix``: the command line (a thin click layer over the public functions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__

METHODS = ("sunsal", "fcls", "nnls", "ls", "admm", "deq")


def _fail(msg: str) -> NoReturn:
    raise click.ClickException(msg)


def _load_endmembers(spec: str, cube: Any, *, resample: bool, seed: int | None) -> Any:
    """``FILE`` (CSV/ENVI), or ``vca:N`` / ``vca:auto`` (extract from the cube, seeded)."""
    from .endmembers import read_endmembers, resample_spectra
    from .extraction import endmembers_from_spec, is_extraction_spec

    if is_extraction_spec(spec):
        try:
            return endmembers_from_spec(cube, spec, seed=seed)
        except ValueError as exc:
            _fail(f"--endmembers {spec}: {exc}")
    if not Path(spec).exists():
        _fail(f"--endmembers {spec}: no such file (give a CSV / ENVI .sli file, or vca:N)")
    E = read_endmembers(spec)
    if E.sizes["band"] != cube.sizes["band"] or resample:
        if resample and "wavelength" in cube.coords:
            return resample_spectra(E, cube)
        if resample:
            _fail("--resample needs wavelengths in the scene's metadata; none were found")
        if E.sizes["band"] != cube.sizes["band"]:
            hint = (" (add --resample to interpolate them onto the cube's wavelengths)"
                    if "wavelength" in cube.coords and "wavelength" in E.coords else "")
            _fail(f"the endmembers have {E.sizes['band']} bands but the cube has "
                  f"{cube.sizes['band']}{hint}")
    return E


def _parse_chunk(chunk: str | int) -> int | str:
    """``--chunk``: a number of pixels, or ``auto``."""
    if isinstance(chunk, int) or chunk == "auto":
        return chunk
    try:
        value = int(chunk)
    except ValueError:
        _fail(f"--chunk {chunk!r}: expected a number of pixels or auto")
    if value < 1:
        _fail(f"--chunk {chunk!r}: must be positive")
    return value


def _write(result: Any, out: Path, *, overwrite: bool, progress: bool) -> Path:
    from .io import to_cog, to_zarr

    suffix = out.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return to_cog(result, out, overwrite=overwrite, progress=progress)
    if suffix == ".zarr":
        return to_zarr(result, out, overwrite=overwrite, progress=progress)
    _fail(f"--out {out}: use a .tif (Cloud-Optimized GeoTIFF) or .zarr path")
    raise AssertionError  # unreachable


def unmix_scene(
    scene: str | Path,
    *,
    method: str,
    endmembers: str | None = None,
    model: str | None = None,
    lam: float = 0.0,
    device: str = "cpu",
    chunk: int | str = "auto",
    resample: bool = False,
    seed: int | None = None,
    batch_size: int | None = None,
    return_endmembers: bool = False,
) -> Any:
    """Open ``scene`` lazily and return its (lazy) abundance map for ``method``; used by run and batch.

    With ``return_endmembers=True`` returns ``(abundances, endmembers)``: the endmembers used (read,
    extracted or the model's), for the reconstruction-error layer.
    """
    from . import api
    from .io import open_cube

    cube = open_cube(scene, chunks=chunk)
    if method in ("admm", "deq"):
        if not model:
            _fail(f"--method {method} needs --model FILE (train one with `xr-unmix train`)")
        from .models.base import load_model

        net = load_model(model)
        fn = api.admm if method == "admm" else api.deq
        ab = fn(cube, net, device=device,
                **({"batch_size": batch_size} if batch_size and method == "admm" else {}))
        return (ab, net.endmembers) if return_endmembers else ab
    if not endmembers:
        _fail(f"--method {method} needs --endmembers FILE or vca:N")
    E = _load_endmembers(endmembers, cube, resample=resample, seed=seed)
    if method == "sunsal":
        ab = api.sunsal(cube, E, lam=lam, device=device)
    else:
        ab = getattr(api, method)(cube, E, device=device)
    return (ab, E) if return_endmembers else ab


@click.group()
@click.version_option(__version__, prog_name="xr-unmix")
def main() -> None:
    """Hyperspectral unmixing of georeferenced cubes into abundance maps."""


@main.command()
@click.argument("scene", type=click.Path(exists=True, dir_okay=False))
@click.option("--endmembers", "endmembers", help="CSV / ENVI .sli file, or vca:N to extract N.")
@click.option("--method", type=click.Choice(METHODS), default="fcls", show_default=True)
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="Trained model (admm, deq).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output .tif (COG) or .zarr.")
@click.option("--lam", type=float, default=0.0, show_default=True, help="SUnSAL l1 weight.")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler.")
@click.option("--workers", type=int, default=None, help="Start a LocalCluster with N worker processes.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--chunk", default="auto", show_default=True,
              help="Spatial tile size (px), or auto: tiles of ~64 MB of input (256 px at 200 bands).")
@click.option("--batch-size", "batch_size", type=int, default=None,
              help="admm: pixels per forward pass (default: a whole tile).")
@click.option("--resample", is_flag=True, help="Resample the endmembers onto the cube's wavelengths.")
@click.option("--quality", is_flag=True,
              help="Also write the per-pixel reconstruction RMSE beside the output (*_rmse.tif/zarr).")
@click.option("--seed", type=int, default=None, help="Seed for vca:N.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def run(scene: str, endmembers: str | None, method: str, model: str | None, out: Path, lam: float,
        scheduler: str | None, workers: int | None, device: str, chunk: str, batch_size: int | None,
        resample: bool, quality: bool, seed: int | None, overwrite: bool) -> None:
    """Unmix SCENE into an abundance map (COG or Zarr).

    \b
    Examples:
      xr-unmix run scene.tif --endmembers em.csv --method fcls --out ab.tif
      xr-unmix run scene.tif --endmembers vca:4 --seed 0 --method sunsal --out ab.zarr
      xr-unmix run scene.tif --method deq --model deq.safetensors --out ab.tif --quality
    """
    from .cluster import dask_scheduler

    chunk_px = _parse_chunk(chunk)
    if endmembers and method in ("admm", "deq"):
        _fail(f"--method {method} takes its endmembers from --model; drop --endmembers")
    with dask_scheduler(scheduler, workers):
        ab, E = unmix_scene(scene, method=method, endmembers=endmembers, model=model, lam=lam,
                            device=device, chunk=chunk_px, resample=resample, seed=seed,
                            batch_size=batch_size, return_endmembers=True)
        path = _write(ab, out, overwrite=overwrite, progress=sys.stderr.isatty())
        click.echo(f"abundances ({', '.join(map(str, ab.endmember.values))}) -> {path}")
        if quality:
            from .io import open_abundance, open_cube
            from .metrics import reconstruction_error

            # from the written abundances, so that the estimator does not run twice
            cube = open_cube(scene, chunks=chunk_px)
            tile = {"y": cube.chunksizes["y"][0], "x": cube.chunksizes["x"][0]}
            written = open_abundance(path, chunks=tile) if path.suffix.lower() != ".zarr" \
                else open_abundance(path)
            written = written.assign_coords(y=cube.y.values, x=cube.x.values)  # exact alignment
            err = reconstruction_error(cube, E, written)
            qpath = out.with_name(out.stem + "_rmse" + out.suffix)
            _write(err, qpath, overwrite=overwrite, progress=False)
            click.echo(f"reconstruction RMSE -> {qpath}")


@main.command()
@click.option("--endmembers", "endmembers", required=True,
              help="CSV / ENVI endmember spectra, or vca:N to extract N from --scene.")
@click.option("--method", type=click.Choice(["admm", "deq"]), required=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model file.")
@click.option("--scene", type=click.Path(exists=True, dir_okay=False),
              help="deq: fit on this scene without labels; with --labels: labelled training pixels.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Abundance raster aligned with --scene (one band per endmember, NaN/nodata = "
                   "unlabelled), for supervised training.")
@click.option("--n-pixels", type=int, default=4096, show_default=True,
              help="Synthetic training pixels (xr_unmix.simulate) when no scene/labels are given.")
@click.option("--snr-db", type=float, default=30.0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Training epochs (model default if unset).")
@click.option("--lr", type=float, default=None, help="Learning rate (model default if unset).")
@click.option("--layers", type=int, default=None, help="admm: unrolled layers (default 2).")
@click.option("--projection", type=click.Choice(["simplex", "scaled"]), default=None,
              help="deq: 'simplex' (default, Euclidean projection onto the simplex) or 'scaled' (scaled "
                   "linear mixing model: non-negative z = s a, abundances z / sum z; brightness-invariant).")
@click.option("--precondition", type=float, default=None,
              help="deq: damped Newton step with this damping (e.g. 1e-3; default 0 = projected gradient).")
@click.option("--resample", is_flag=True, help="Resample the endmembers onto the scene's wavelengths.")
@click.option("--threads", type=int, default=None,
              help="torch threads (default: 1 for admm, whose mini-batches are too small to split; "
                   "torch's default for deq).")
@click.option("--seed", type=int, default=0, show_default=True)
def train(endmembers: str, method: str, out: Path, scene: str | None, labels: str | None,
          n_pixels: int, snr_db: float, epochs: int | None, lr: float | None, layers: int | None,
          projection: str | None, precondition: float | None, resample: bool, threads: int | None,
          seed: int) -> None:
    """Train a U-ADMM-AENet (admm) or DEQ-Unmix (deq) model and save it (safetensors + JSON).

    \b
    Training data, by what is given:
      --scene + --labels   supervised on the labelled pixels (admm, deq)
      --scene              unsupervised on the scene (deq; endmembers may be vca:N)
      neither              supervised on synthetic mixtures of the endmembers (admm, deq)
    """
    from .endmembers import read_endmembers
    from .extraction import is_extraction_spec
    from .io import open_cube

    if labels and not scene:
        _fail("--labels needs --scene (the spectra the labels belong to)")
    if layers is not None and method != "admm":
        _fail("--layers is for --method admm")
    if (projection is not None or precondition is not None) and method != "deq":
        _fail("--projection and --precondition are for --method deq")
    if threads is not None or method == "admm":
        import torch

        # 64 x bands mini-batches: a second thread costs more in synchronisation than it gains
        # (measured: 5 epochs on 10k labelled pixels, 5.9 s with 1 thread, 38 s with 2 on a busy host)
        torch.set_num_threads(max(1, threads or 1))
    cube = open_cube(scene) if scene else None
    if cube is not None:
        E = _load_endmembers(endmembers, cube, resample=resample, seed=seed)
    elif is_extraction_spec(endmembers):
        _fail(f"--endmembers {endmembers} extracts from a scene: give --scene")
    elif not Path(endmembers).exists():
        _fail(f"--endmembers {endmembers}: no such file")
    else:
        E = read_endmembers(endmembers)
    fit_kw: dict[str, Any] = {"seed": seed}
    if epochs is not None:
        fit_kw["epochs"] = epochs
    if lr is not None:
        fit_kw["lr"] = lr
    if method == "admm":
        from .models.uadmm import UADMMNet

        model: Any = UADMMNet.from_endmembers(E, **({"layers": layers} if layers else {}))
    else:
        from .models.deq import DEQUnmix

        deq_kw: dict[str, Any] = {}
        if projection is not None:
            deq_kw["projection"] = projection
        if precondition is not None:
            deq_kw["precondition"] = precondition
        try:
            model = DEQUnmix.from_endmembers(E, seed=seed, **deq_kw)
        except ValueError as exc:  # e.g. a negative --precondition
            _fail(str(exc))
    try:
        if cube is not None and labels:
            Y, A = _labelled(cube, labels, E, tiles=method == "deq")
            history = model.fit(Y, A, **fit_kw)
        elif cube is not None:
            if method != "deq":
                _fail("--method admm trains on labels: give --scene with --labels, or neither "
                      "(synthetic mixtures of the endmembers)")
            history = model.fit_scene(cube, **fit_kw)
        else:
            from .simulate import simulate

            Y, A = simulate(E, n_pixels, snr_db=snr_db, seed=seed)
            history = model.fit(Y, A, **fit_kw)
    except ValueError as exc:  # bad labels, all-NaN scene ...: say so, no traceback
        _fail(str(exc))
        return
    model.save(out)
    last = {k: (v[-1] if isinstance(v, list) and v else v) for k, v in dict(history).items()
            if not isinstance(v, list) or not v or isinstance(v[-1], int | float)} \
        if isinstance(history, dict) else {}
    click.echo(f"model -> {out}  {json.dumps(last, default=float)}")


#: side (px) of the tiles a spatial model (deq) is trained on from a labelled scene
TRAIN_TILE = 64


def _starts(n: int, t: int) -> list[int]:
    """Tile origins covering ``n`` px with tiles of ``t`` (the last one flush with the edge)."""
    out = list(range(0, n - t + 1, t))
    return out if out[-1] + t == n else [*out, n - t]


def _labelled(cube: Any, labels: str, E: Any, *, tiles: bool) -> tuple[Any, Any]:
    """Training arrays from a scene and an aligned abundance raster.

    Pixel form ``(n, bands)``, ``(n, R)`` with only the pixels finite in both; or (``tiles``) the whole
    scene as tiles ``(n, bands, h, w)`` with labels ``(n, R, h, w)`` NaN where unlabelled (a spatial
    model sees every pixel as context), cut into ``TRAIN_TILE`` tiles. The raster's bands are matched to the endmembers by name when
    its band descriptions are endmember names, else taken in order.
    """
    import numpy as np

    from .io import open_abundance

    truth = open_abundance(labels)
    if truth.sizes["y"] != cube.sizes["y"] or truth.sizes["x"] != cube.sizes["x"]:
        _fail(f"--labels is {truth.sizes['y']}x{truth.sizes['x']} px but --scene is "
              f"{cube.sizes['y']}x{cube.sizes['x']}")
    names = [str(n) for n in E.endmember.values]
    have = [str(n) for n in truth.endmember.values]
    if set(names) <= set(have):
        truth = truth.sel(endmember=names)
    elif len(have) != len(names):
        _fail(f"--labels has {len(have)} bands ({', '.join(have)}) but there are {len(names)} "
              f"endmembers ({', '.join(names)})")
    Y = cube.transpose("band", "y", "x").values.astype(np.float32)
    A = truth.transpose("endmember", "y", "x").values.astype(np.float32)
    if tiles:
        valid = np.isfinite(Y).all(0)
        A = np.where(valid[None] & np.isfinite(A).all(0, keepdims=True), A, np.nan)
        if not np.isfinite(A).all(0).any():
            _fail("--labels: no pixel is labelled (all NaN/nodata where the scene is valid)")
        # nodata pixels become the mean spectrum: context for the spatial operator, never a label
        Y = np.where(valid[None], Y, np.nanmean(Y[:, valid], axis=1)[:, None, None])
        t = TRAIN_TILE
        th, tw = min(t, Y.shape[1]), min(t, Y.shape[2])
        starts = [(i, j) for i in _starts(Y.shape[1], th) for j in _starts(Y.shape[2], tw)]
        Yt = np.stack([Y[:, i:i + th, j:j + tw] for i, j in starts])
        At = np.stack([A[:, i:i + th, j:j + tw] for i, j in starts])
        keep = np.isfinite(At).all(1).any((1, 2))
        return Yt[keep], At[keep]
    Yp, Ap = Y.reshape(Y.shape[0], -1).T, A.reshape(A.shape[0], -1).T
    ok = np.isfinite(Yp).all(1) & np.isfinite(Ap).all(1)
    if not ok.any():
        _fail("--labels: no pixel is labelled (all NaN/nodata where the scene is valid)")
    return Yp[ok], Ap[ok]


@main.command()
@click.argument("scenes", nargs=-1, required=True)
@click.option("--endmembers", "endmembers", help="CSV / ENVI endmember spectra, or vca:N.")
@click.option("--method", type=click.Choice(METHODS), default="fcls", show_default=True)
@click.option("--model", type=click.Path(exists=True, dir_okay=False))
@click.option("--out-dir", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--format", "formats", default="tif", show_default=True,
              help="Comma-separated outputs per scene: tif, zarr or both.")
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler.")
@click.option("--workers", type=int, default=None, help="Start a LocalCluster with N workers.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--chunk", default="auto", show_default=True,
              help="Spatial tile size (px), or auto: tiles of ~64 MB of input (256 px at 200 bands).")
@click.option("--resample", is_flag=True)
@click.option("--lam", type=float, default=0.0, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for vca:N.")
@click.option("--overwrite", is_flag=True, help="Recompute scenes whose outputs are complete.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="JSON run report (default OUT_DIR/xr_unmix_batch_report.json).")
def batch(scenes: tuple[str, ...], endmembers: str | None, method: str, model: str | None,
          out_dir: Path, formats: str, scheduler: str | None, workers: int | None, device: str,
          chunk: str, resample: bool, lam: float, seed: int | None, overwrite: bool,
          report_path: Path | None) -> None:
    """Unmix many SCENES (paths, globs, or @list.txt files); resumes, reports per scene.

    Exits with status 1 if any scene failed (after finishing the others).
    """
    from .batch import run_batch

    chunk = _parse_chunk(chunk)  # type: ignore[assignment]
    try:
        report = run_batch(list(scenes), out_dir=out_dir, method=method, endmembers=endmembers,
                           model=model,
                           formats=[f.strip() for f in formats.split(",") if f.strip()],
                           scheduler=scheduler, workers=workers, device=device, chunk=chunk,
                           resample=resample, lam=lam, seed=seed, overwrite=overwrite,
                           report_path=report_path)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
        return
    n = report["summary"]
    click.echo(f"{n['done']} done, {n['skipped']} skipped (complete), {n['failed']} failed; "
               f"report: {report['report_path']}", err=True)
    failed = [s for s in report["scenes"] if s["status"] == "failed"]
    if failed:
        for s in failed:
            click.echo(f"  FAILED {s['scene']}: {s['error']}", err=True)
        click.echo(f"{len(failed)} scene(s) failed; see {report['report_path']}", err=True)
        sys.exit(1)


@main.command()
@click.option("--out", "out", default="out", show_default=True, type=click.Path(path_type=Path))
def demo(out: Path) -> None:
    """Unmix the bundled sample scene end to end (COG, Zarr, PNG, RMSE against the truth)."""
    from .demo import run_demo

    run_demo(out)


if __name__ == "__main__":  # pragma: no cover
    main()
