"""``xr-unmix``: the command line (a thin click layer over the public functions)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__

METHODS = ("sunsal", "fcls", "nnls", "ls", "admm", "deq")


def _fail(msg: str) -> None:
    raise click.ClickException(msg)


def _load_endmembers(spec: str, cube: Any, *, resample: bool, seed: int | None) -> Any:
    """``FILE`` (CSV/ENVI) or ``vca:N`` (extract N endmembers from the cube)."""
    from .endmembers import read_endmembers, resample_spectra

    if spec.lower().startswith("vca:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            _fail(f"--endmembers {spec!r}: expected vca:N with an integer N")
        from .extraction import extract_endmembers

        return extract_endmembers(cube, n, method="vca", seed=seed)
    E = read_endmembers(spec)
    if E.sizes["band"] != cube.sizes["band"] or resample:
        if resample and "wavelength" in cube.coords:
            return resample_spectra(E, cube)
        if E.sizes["band"] != cube.sizes["band"]:
            hint = (" (add --resample to interpolate them onto the cube's wavelengths)"
                    if "wavelength" in cube.coords and "wavelength" in E.coords else "")
            _fail(f"the endmembers have {E.sizes['band']} bands but the cube has "
                  f"{cube.sizes['band']}{hint}")
    return E


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
    chunk: int = 512,
    resample: bool = False,
    seed: int | None = None,
) -> Any:
    """Open ``scene`` lazily and return its (lazy) abundance map for ``method``; used by run and batch."""
    from . import api
    from .io import open_cube

    cube = open_cube(scene, chunks=chunk)
    if method in ("admm", "deq"):
        if not model:
            _fail(f"--method {method} needs --model FILE (train one with `xr-unmix train`)")
        fn = api.admm if method == "admm" else api.deq
        return fn(cube, model, device=device)
    if not endmembers:
        _fail(f"--method {method} needs --endmembers FILE or vca:N")
    E = _load_endmembers(endmembers, cube, resample=resample, seed=seed)
    if method == "sunsal":
        return api.sunsal(cube, E, lam=lam, device=device)
    return getattr(api, method)(cube, E, device=device)


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
@click.option("--chunk", type=int, default=512, show_default=True, help="Spatial tile size (px).")
@click.option("--resample", is_flag=True, help="Resample the endmembers onto the cube's wavelengths.")
@click.option("--quality", is_flag=True,
              help="Also write the per-pixel reconstruction RMSE beside the output (*_rmse.tif/zarr).")
@click.option("--seed", type=int, default=None, help="Seed for vca:N.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def run(scene: str, endmembers: str | None, method: str, model: str | None, out: Path, lam: float,
        scheduler: str | None, workers: int | None, device: str, chunk: int, resample: bool,
        quality: bool, seed: int | None, overwrite: bool) -> None:
    """Unmix SCENE into an abundance map (COG or Zarr)."""
    from .cluster import dask_scheduler

    with dask_scheduler(scheduler, workers):
        ab = unmix_scene(scene, method=method, endmembers=endmembers, model=model, lam=lam,
                         device=device, chunk=chunk, resample=resample, seed=seed)
        path = _write(ab, out, overwrite=overwrite, progress=True)
        click.echo(f"abundances ({', '.join(map(str, ab.endmember.values))}) -> {path}")
        if quality:
            from .io import open_cube
            from .metrics import reconstruction_error

            cube = open_cube(scene, chunks=chunk)
            E = _endmembers_of(ab, endmembers, model, cube, resample, seed)
            err = reconstruction_error(cube, E, ab)
            qpath = out.with_name(out.stem + "_rmse" + out.suffix)
            _write(err, qpath, overwrite=overwrite, progress=False)
            click.echo(f"reconstruction RMSE -> {qpath}")


def _endmembers_of(ab: Any, endmembers: str | None, model: str | None, cube: Any, resample: bool,
                   seed: int | None) -> Any:
    if model:
        from .models.base import load_model

        return load_model(model).endmembers
    assert endmembers is not None
    return _load_endmembers(endmembers, cube, resample=resample, seed=seed)


@main.command()
@click.option("--endmembers", "endmembers", required=True, type=click.Path(exists=True),
              help="CSV / ENVI endmember spectra.")
@click.option("--method", type=click.Choice(["admm", "deq"]), required=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model file.")
@click.option("--scene", type=click.Path(exists=True, dir_okay=False),
              help="deq: fit on this scene without labels; with --labels: labelled training pixels.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Abundance raster (endmember bands) aligned with --scene, for supervised training.")
@click.option("--n-pixels", type=int, default=4096, show_default=True,
              help="Synthetic training pixels (xr_unmix.simulate) when no scene/labels are given.")
@click.option("--snr-db", type=float, default=30.0, show_default=True)
@click.option("--epochs", type=int, default=None, help="Training epochs (model default if unset).")
@click.option("--layers", type=int, default=None, help="admm: unrolled layers.")
@click.option("--seed", type=int, default=0, show_default=True)
def train(endmembers: str, method: str, out: Path, scene: str | None, labels: str | None,
          n_pixels: int, snr_db: float, epochs: int | None, layers: int | None, seed: int) -> None:
    """Train a U-ADMM-AENet (admm) or DEQ-Unmix (deq) model and save it (safetensors + JSON)."""
    import numpy as np

    from .endmembers import read_endmembers
    from .io import open_cube

    E = read_endmembers(endmembers)
    fit_kw: dict[str, Any] = {"seed": seed}
    if epochs is not None:
        fit_kw["epochs"] = epochs
    if method == "admm":
        from .models.uadmm import UADMMNet

        model: Any = UADMMNet.from_endmembers(E, **({"layers": layers} if layers else {}))
    else:
        from .models.deq import DEQUnmix

        model = DEQUnmix.from_endmembers(E)
    if labels and not scene:
        _fail("--labels needs --scene (the spectra the labels belong to)")
    if scene and labels:
        cube = open_cube(scene)
        truth = open_cube(labels)
        if truth.sizes["y"] != cube.sizes["y"] or truth.sizes["x"] != cube.sizes["x"]:
            _fail(f"--labels is {truth.sizes['y']}x{truth.sizes['x']} px but --scene is "
                  f"{cube.sizes['y']}x{cube.sizes['x']}")
        Y = cube.transpose("band", "y", "x").values.reshape(cube.sizes["band"], -1).T
        A = truth.transpose("band", "y", "x").values.reshape(truth.sizes["band"], -1).T
        ok = np.isfinite(Y).all(1) & np.isfinite(A).all(1)
        history = model.fit(Y[ok].astype(np.float32), A[ok].astype(np.float32), **fit_kw)
    elif scene:
        if method != "deq":
            _fail("--method admm trains on labels: give --scene with --labels, or neither "
                  "(synthetic mixtures of the endmembers)")
        history = model.fit_scene(open_cube(scene), **fit_kw)
    else:
        from .simulate import simulate

        Y, A = simulate(E, n_pixels, snr_db=snr_db, seed=seed)
        history = model.fit(Y, A, **fit_kw)
    model.save(out)
    last = {k: (v[-1] if isinstance(v, list) and v else v) for k, v in dict(history).items()} \
        if isinstance(history, dict) else {}
    click.echo(f"model -> {out}  {json.dumps(last, default=float)}")


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

    if chunk != "auto":
        try:
            chunk = int(chunk)  # type: ignore[assignment]
        except ValueError:
            _fail(f"--chunk {chunk!r}: expected a number of pixels or auto")
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
