"""``xr-unmix``: the command line, a thin click layer over :mod:`xr_unmix.pipeline`.

Only this module knows click. Package errors (:class:`~xr_unmix.errors.XrUnmixError`: bad input, bad
parameters, an output in the way, an unreachable scheduler, a missing GPU) and click's own usage errors
are printed as one line, ``Error: ...``, and exit with status 2. Any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__, bundle_runs, pipeline
from .batch import run_batch
from .demo import run_demo
from .endmembers import read_endmembers
from .errors import BandMismatchError, OutputExistsError, TrainingWarning, XrUnmixError
from .runtime import dashboard_line, dask_scheduler, set_torch_threads
from .simulate import simulate

METHODS = tuple(pipeline.METHODS)


class UserError(click.ClickException):
    """A user error: one line on stderr, exit status 2."""

    exit_code = 2


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def message(exc: XrUnmixError) -> str:
    """The one-line message for a package error, with the API's fix spelt as the CLI's flag."""
    msg = _one_line(str(exc))
    if exc.param:
        msg = f"--{exc.param.replace('_', '-')}: {msg}"
    if isinstance(exc, OutputExistsError):
        msg = msg.replace("pass overwrite=True", "add --overwrite")
    if isinstance(exc, BandMismatchError) and "resample" in msg:
        msg += " (on the command line: add --resample)"
    return msg


class _Cli(click.Group):
    """The ``xr-unmix`` group: translates package errors, prints every user error as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except XrUnmixError as exc:
            raise UserError(message(exc)) from exc

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            msg = exc.format_message()
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                msg += f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"Error: {_one_line(msg)}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def _fail(msg: str) -> NoReturn:
    raise UserError(msg)


def _usage(msg: str) -> NoReturn:
    raise click.UsageError(msg)


def _parse_chunk(chunk: str | int) -> int | str:
    """``--chunk``: a number of pixels, or ``auto``."""
    try:
        return pipeline.parse_chunk(chunk)
    except XrUnmixError as exc:
        _usage(message(exc))


# options that ``run`` and ``batch`` share
_METHOD = click.option("--method", type=click.Choice(METHODS), default="fcls", show_default=True)
_MODEL = click.option(
    "--model", type=click.Path(exists=True, dir_okay=False),
    help="Trained model file (.safetensors, from `xr-unmix train`) for --method admm or deq.")
_LAM = click.option("--lam", type=float, default=0.0, show_default=True,
                    help="SUnSAL l1 weight (>= 0).")
_SCHEDULER = click.option("--scheduler", default=None, help="Address of a running Dask scheduler.")
_WORKERS = click.option("--workers", type=click.IntRange(min=1), default=None,
                        help="Start a LocalCluster with N worker processes (prints its dashboard link).")
_DEVICE = click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu",
                       show_default=True)
_CHUNK = click.option(
    "--chunk", default="auto", show_default=True,
    help="Spatial tile size (px), or auto: tiles of ~64 MB of input (256 px at 200 bands).")


@click.group(cls=_Cli)
@click.version_option(__version__, prog_name="xr-unmix")
def main() -> None:
    """Hyperspectral unmixing of georeferenced cubes into abundance maps."""


def _run_bundles(scene: str, library: str, out: Path, *, method: str, n_mc: int,
                 max_endmembers: str, normalization: str, mesma: bool, mesma_penalty: float,
                 seed: int | None, chunk: int | str, scheduler: str | None, workers: int | None,
                 overwrite: bool, conflicts: dict[str, Any]) -> None:
    """``run --library``: bundle unmixing, class fractions and their uncertainty written."""
    mode = "mesma" if mesma else "sma"
    sizes = bundle_runs.parse_set_sizes(max_endmembers)
    bundle_runs.check_bundle_request(library, out, method=method, n_mc=n_mc,
                                     max_endmembers=sizes, normalization=normalization,
                                     mode=mode, overwrite=overwrite, conflicts=conflicts,
                                     mesma_penalty=mesma_penalty)
    with dask_scheduler(scheduler, workers) as client:
        if workers:
            click.echo(dashboard_line(client), err=True)
        ds = bundle_runs.unmix_bundles_scene(
            scene, library, chunk=chunk, n_mc=n_mc, max_endmembers=sizes,
            normalization=normalization, method=method, mode=mode, seed=0 if seed is None else seed,
            mesma_penalty=mesma_penalty)
        paths = bundle_runs.write_bundle_output(ds, out, overwrite=overwrite,
                                                progress=sys.stderr.isatty())
    click.echo(f"class fractions ({', '.join(map(str, ds['class'].values))}) -> {paths[0]}")
    click.echo(f"uncertainty (std over {n_mc} draws) -> {paths[1]}")
    if mesma:
        click.echo(f"residual RMSE of the chosen draw -> {paths[2]}")
    if len(paths) > 3:
        click.echo(f"spectra in the chosen draw -> {paths[3]}")


@main.command()
@click.argument("scene")
@click.option("--endmembers", "endmembers", help="CSV / ENVI .sli file, or vca:N to extract N.")
@_METHOD
@_MODEL
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output .tif (COG) or .zarr.")
@_LAM
@_SCHEDULER
@_WORKERS
@_DEVICE
@_CHUNK
@click.option("--batch-size", "batch_size", type=click.IntRange(min=1), default=None,
              help="admm: pixels per forward pass (default: a whole tile).")
@click.option("--resample", is_flag=True,
              help="Resample the endmember spectra onto the scene's wavelengths (linear interpolation).")
@click.option("--quality", is_flag=True,
              help="Also write the per-pixel reconstruction RMSE beside the output (*_rmse.tif/zarr).")
@click.option("--seed", type=int, default=None,
              help="Seed for vca:N, and for the Monte Carlo draws of --library (default 0).")
@click.option("--library", type=click.Path(dir_okay=False), default=None,
              help="Class spectral library (row-wise CSV with a Class column, or ENVI .sli): bundle "
                   "unmixing; writes class fractions to OUT and their std to OUT_uncertainty.")
@click.option("--n-mc", "n_mc", type=int, default=50, show_default=True,
              help="--library: Monte Carlo draws (MESMA: candidate endmember sets).")
@click.option("--max-endmembers", default="3", show_default=True,
              help="--library: spectra per draw, picked class-even; with --mesma a comma list "
                   "(2,3) tries each set size and writes OUT_n_endmembers.")
@click.option("--normalization", type=click.Choice(["none", "brightness"]), default="none",
              show_default=True, help="--library: brightness-normalise pixels and spectra first.")
@click.option("--mesma", is_flag=True,
              help="--library: per pixel, the draw with the lowest residual (also writes OUT_rmse).")
@click.option("--mesma-penalty", "mesma_penalty", type=float, default=0.0, show_default=True,
              help="--mesma with several set sizes: RMSE added per spectrum beyond the smallest size.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def run(scene: str, endmembers: str | None, method: str, model: str | None, out: Path, lam: float,
        scheduler: str | None, workers: int | None, device: str, chunk: str, batch_size: int | None,
        resample: bool, quality: bool, seed: int | None, library: str | None, n_mc: int,
        max_endmembers: str, normalization: str, mesma: bool, mesma_penalty: float,
        overwrite: bool) -> None:
    """Unmix SCENE into an abundance map (COG or Zarr).

    SCENE: a raster file, or any path GDAL opens (NETCDF:"f.nc":var, /vsizip/a.zip/a.tif,
    /vsicurl/https://..., s3://bucket/a.tif).

    \b
    Examples:
      xr-unmix run scene.tif --endmembers em.csv --method fcls --out ab.tif
      xr-unmix run scene.tif --endmembers vca:4 --seed 0 --method sunsal --out ab.zarr
      xr-unmix run scene.tif --method deq --model deq.safetensors --out ab.tif --quality
      xr-unmix run scene.tif --library lib.csv --n-mc 50 --out fractions.tif
    """

    chunk_px = _parse_chunk(chunk)
    if library is not None:
        _run_bundles(scene, library, out, method=method, n_mc=n_mc, max_endmembers=max_endmembers,
                     normalization=normalization, mesma=mesma, mesma_penalty=mesma_penalty,
                     seed=seed, chunk=chunk_px,
                     scheduler=scheduler, workers=workers, overwrite=overwrite,
                     conflicts={"endmembers": endmembers, "model": model, "lam": lam,
                                "quality": quality, "resample": resample, "batch_size": batch_size})
        return
    # every check that needs no computation, before a cluster starts or a tile is read
    pipeline.check_request(method, endmembers=endmembers, model=model, lam=lam,
                           batch_size=batch_size, device=device, local=scheduler is None)
    pipeline.check_output(out, overwrite=overwrite)
    if quality:
        pipeline.check_output(pipeline.quality_path(out), overwrite=overwrite)
    with dask_scheduler(scheduler, workers) as client:
        if workers:
            click.echo(dashboard_line(client), err=True)
        ab, E = pipeline.unmix_scene(scene, method=method, endmembers=endmembers, model=model,
                                     lam=lam, device=device, chunk=chunk_px, resample=resample,
                                     seed=seed, batch_size=batch_size, return_endmembers=True,
                                     local=scheduler is None)
        cube = pipeline.open_scene(scene, chunk_px) if quality else None
        # one computation of the estimator, the quality layer made from the written map
        paths = pipeline.write_output(ab, out, quality=cube, endmembers=E, overwrite=overwrite,
                                      progress=sys.stderr.isatty())
        click.echo(f"abundances ({', '.join(map(str, ab.endmember.values))}) -> {paths[0]}")
        if quality:
            click.echo(f"reconstruction RMSE -> {paths[1]}")


@main.command()
@click.option("--endmembers", "endmembers", required=True,
              help="CSV / ENVI endmember spectra, or vca:N to extract N from --scene.")
@click.option("--method", type=click.Choice(["admm", "deq"]), required=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Model file.")
@click.option("--scene",
              help="deq: fit on this scene without labels; with --labels: labelled training pixels.")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False),
              help="Abundance raster aligned with --scene (one band per endmember, NaN/nodata = "
                   "unlabelled), for supervised training.")
@click.option("--n-pixels", type=int, default=4096, show_default=True,
              help="Synthetic training pixels (xr_unmix.simulate) when no scene/labels are given.")
@click.option("--snr-db", type=float, default=30.0, show_default=True,
              help="Noise of the synthetic training pixels (dB).")
@click.option("--epochs", type=int, default=None, help="Training epochs (model default if unset).")
@click.option("--lr", type=float, default=None, help="Learning rate (model default if unset).")
@click.option("--layers", type=int, default=None, help="admm: unrolled layers (default 2).")
@click.option("--precondition", type=float, default=None,
              help="deq: damped Newton step with this damping (e.g. 1e-3; default 0 = projected gradient).")
@click.option("--resample", is_flag=True, help="Resample the endmembers onto the scene's wavelengths.")
@click.option("--threads", type=int, default=None,
              help="torch threads (default: 1 for admm, whose mini-batches are too small to split; "
                   "torch's default for deq).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed for the initial weights, the training order, vca:N and synthetic pixels.")
def train(endmembers: str, method: str, out: Path, scene: str | None, labels: str | None,
          n_pixels: int, snr_db: float, epochs: int | None, lr: float | None, layers: int | None,
          precondition: float | None, resample: bool, threads: int | None,
          seed: int) -> None:
    """Train a U-ADMM-AENet (admm) or DEQ-Unmix (deq) model and save it (safetensors + JSON).

    \b
    Training data, by what is given:
      --scene + --labels   supervised on the labelled pixels (admm, deq)
      --scene              unsupervised on the scene (deq; endmembers may be vca:N)
      neither              supervised on synthetic mixtures of the endmembers (admm, deq)
    """
    if labels and not scene:
        _usage("--labels needs --scene (the spectra the labels belong to)")
    if layers is not None and method != "admm":
        _usage("--layers is for --method admm")
    if precondition is not None and method != "deq":
        _usage("--precondition is for --method deq")
    if threads is not None or method == "admm":
        # 64 x bands mini-batches: a second thread costs more in synchronisation than it gains
        # (measured: 5 epochs on 10k labelled pixels, 5.9 s with 1 thread, 38 s with 2 on a busy host)
        set_torch_threads(threads)
    cube = pipeline.open_scene(scene, chunk=None) if scene else None
    if cube is not None:
        E = pipeline.load_endmembers(endmembers, cube, resample=resample, seed=seed)
    elif pipeline.is_extraction_spec(endmembers):
        _usage(f"--endmembers {endmembers} extracts from a scene: give --scene")
    else:
        pipeline.check_endmember_spec(endmembers)
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
        if precondition is not None:
            deq_kw["precondition"] = precondition
        try:
            model = DEQUnmix.from_endmembers(E, seed=seed, **deq_kw)
        except ValueError as exc:  # e.g. a negative --precondition
            _fail(str(exc))
    try:
        if cube is not None and labels:
            Y, A = pipeline.labelled_training_data(cube, labels, E, tiles=method == "deq")
            history = model.fit(Y, A, **fit_kw)
        elif cube is not None:
            if method != "deq":
                _usage("--method admm trains on labels: give --scene with --labels, or neither "
                      "(synthetic mixtures of the endmembers)")
            with warnings.catch_warnings():  # said once, in the line below
                warnings.simplefilter("ignore", TrainingWarning)
                history = model.fit_scene(cube, **fit_kw)
        else:
            Y, A = simulate(E, n_pixels, snr_db=snr_db, seed=seed)
            history = model.fit(Y, A, **fit_kw)
    except ValueError as exc:  # bad labels, all-NaN scene ...: say so, no traceback
        _fail(str(exc))
        return
    model.save(out)
    click.echo(_train_line(out, history))


def _train_line(out: Path, history: dict[str, Any]) -> str:
    """One line about a training run: the saved model's loss (not the last epoch's) and its epoch;
    for a scene fit that did not improve on its start, that, with both objectives."""
    if history.get("improved") is False:
        stopped = f" ({history['stopped']})" if history.get("stopped") else ""
        return f"model -> {out}  warning: {history['summary']}{stopped}"
    loss = history.get("final_loss", history.get("best_loss"))
    keys = ("best_epoch", "epochs", "initial_loss", "stopped", "time_s")
    report = {"loss": loss, **{k: history[k] for k in keys if history.get(k) is not None}}
    return f"model -> {out}  {json.dumps(report, default=float)}"


@main.command()
@click.argument("scenes", nargs=-1, required=True)
@click.option("--endmembers", "endmembers", help="CSV / ENVI endmember spectra, or vca:N.")
@_METHOD
@_MODEL
@click.option("--out-dir", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for OUT_DIR/<scene stem>.tif|.zarr, the sidecars and the report.")
@click.option("--format", "formats", default="tif", show_default=True,
              help="Outputs per scene: tif, zarr, or both (= tif,zarr: unmixed once, both written).")
@_SCHEDULER
@_WORKERS
@_DEVICE
@_CHUNK
@click.option("--resample", is_flag=True,
              help="Resample the endmember spectra onto each scene's wavelengths (linear interpolation).")
@_LAM
@click.option("--seed", type=int, default=None, help="Seed for vca:N.")
@click.option("--overwrite", is_flag=True, help="Recompute scenes whose outputs are complete.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="JSON run report (default OUT_DIR/xr_unmix_batch_report.json).")
@click.option("--in-flight", "in_flight", type=click.IntRange(min=1), default=None,
              help="Scenes unmixed at once on a cluster (--workers/--scheduler); fills the workers while "
                   "the client opens a scene or makes its COG. Default: 2 on a cluster, 1 on threads.")
def batch(scenes: tuple[str, ...], endmembers: str | None, method: str, model: str | None,
          out_dir: Path, formats: str, scheduler: str | None, workers: int | None, device: str,
          chunk: str, resample: bool, lam: float, seed: int | None, overwrite: bool,
          report_path: Path | None, in_flight: int | None) -> None:
    """Unmix many SCENES (paths, globs, or @list.txt files); resumes, reports per scene.

    Exits with status 1 if any scene failed (after finishing the others).
    """
    chunk = _parse_chunk(chunk)  # type: ignore[assignment]
    report = run_batch(list(scenes), out_dir=out_dir, method=method, endmembers=endmembers,
                       model=model, formats=[f.strip() for f in formats.split(",") if f.strip()],
                       scheduler=scheduler, workers=workers, device=device, chunk=chunk,
                       resample=resample, lam=lam, seed=seed, overwrite=overwrite,
                       report_path=report_path, in_flight=in_flight)
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
@click.option("--out", "out", default="out", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the demo's COG, Zarr, quality layer and PNG.")
def demo(out: Path) -> None:
    """Unmix the bundled sample scene end to end (COG, Zarr, PNG, RMSE against the truth)."""
    run_demo(out)


if __name__ == "__main__":  # pragma: no cover
    main()
