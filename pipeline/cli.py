"""The ``basewatch`` command: thin wrappers over :mod:`pipeline.stages` (and the evaluate stage).

Every error a user can cause is reported as one line on stderr with its own exit code
(:data:`pipeline.errors.EXIT_CODES`); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.config import Config, load_config
from pipeline.errors import BasewatchError

INTERNAL_ERROR_EXIT = 70
"""Exit code of an unexpected failure (a bug): report it with the ``--debug`` traceback."""

app = typer.Typer(
    name="basewatch",
    help=(
        "Watch fixed sites in Sentinel-2 L2A imagery: find what was removed from, or appeared at, "
        "an air base or a port between dates. Stages: search -> load -> coregister -> detect -> "
        "evaluate -> report; `run` does them all. Parameters come from configs/params.yaml."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state: dict[str, Any] = {"config": None, "debug": False}

SiteOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--site",
        "-s",
        help="Site name (seeds/sites/<name>.geojson); repeat for several. "
        "Default: every site in the config.",
    ),
]


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Config YAML (default: configs/params.yaml)."),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each step.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only errors; no progress bars.")
    ] = False,
    log_json: Annotated[
        bool,
        typer.Option("--log-json", help="Log one JSON object per line on stderr (for cron)."),
    ] = False,
) -> None:
    """Sentinel-2 change detection for fixed sites."""
    from pipeline.io.progress import configure_logging, set_progress_enabled

    # odc-loader's in-memory reprojection of a window warns that it has no geotransform: noise.
    # `load.reading` hides it while it runs, but a failed read ends that scope while dask threads
    # are still reading, and their warning would break the one-line error; so, process-wide.
    warnings.filterwarnings("ignore", message="Dataset has no geotransform, gcps, or rpcs")
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    if quiet:
        level = logging.ERROR
    configure_logging(level, json_logs=log_json, stream=sys.stderr)
    set_progress_enabled(not quiet)
    _state["config_path"] = config
    _state["config"] = None  # loaded afresh by each invocation (several run in one process)
    _state["debug"] = debug


def _config() -> Config:
    if _state.get("config") is None:
        _state["config"] = load_config(_state.get("config_path"))
    return _state["config"]


def _guard(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; turn errors into one line on stderr and the right exit code."""
    try:
        return fn()
    except BasewatchError as exc:
        if _state.get("debug"):
            raise
        typer.echo(f"basewatch: error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("basewatch: interrupted; outputs of finished stages are intact", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
        if _state.get("debug"):
            raise
        typer.echo(
            f"basewatch: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for the traceback and report it)",
            err=True,
        )
        raise typer.Exit(INTERNAL_ERROR_EXIT) from None


def _sites(site: list[str] | None) -> list[str]:
    from pipeline.sites import get_site

    names = list(site) if site else list(_config().sites)
    for n in names:
        get_site(n, _config().seeds_dir)  # fail early with the list of known sites
    return names


def _per_site(stage: str, site: list[str] | None, **options: Any) -> None:
    def go() -> None:
        names = _sites(site)
        from pipeline.evaluation import stage as evaluation
        from pipeline.stages import site as stages

        fn = getattr(evaluation if stage == "evaluate" else stages, f"run_{stage}")
        for name in names:
            result = fn(_config(), name, **options)
            typer.echo(f"{name}: {stage}: {_summary(stage, result)}")

    _guard(go)


def _summary(stage: str, result: Any) -> str:
    if stage == "search":
        return f"{result} Items"
    if stage == "load":
        return f"{len(result['dates_kept'])} dates kept, {len(result['dates_dropped'])} dropped"
    if stage == "coregister":
        n_failed = len(result["failed_dates"])
        return (
            f"reference {result['reference_date']}, {len(result['dates'])} dates, {n_failed} failed"
        )
    if stage == "detect":
        return f"{result} objects"
    if stage == "tile":
        return (
            f"{result['n_objects']} objects ({result['n_removed']} removed, "
            f"{result['n_appeared']} appeared), {result['method']}, {len(result['dates'])} dates"
        )
    if stage == "evaluate":
        keys = ("object_precision", "object_recall", "object_f1", "coreg_rmse_px", "n_detections")
        return ", ".join(f"{k}={result[k]}" for k in keys if k in result)
    return str(result)


@app.command("demo-catalog")
def demo_catalog() -> None:
    """Generate the SIMULATED demo catalog (COGs + STAC + ground truth) for the configured sites."""

    def go() -> Path:
        from pipeline.simulate.build import run_demo_catalog

        return run_demo_catalog(_config())

    path = _guard(go)
    typer.echo(f"demo catalog (simulated): {path}")


@app.command()
def search(site: SiteOpt = None) -> None:
    """Search the STAC API or local catalog for the site's Items -> data/<site>/items.json."""
    _per_site("search", site)


@app.command()
def load(site: SiteOpt = None) -> None:
    """Cut each Item to the site grid, harmonise, mask clouds -> data/<site>/cube.zarr."""
    _per_site("load", site)


@app.command()
def coregister(site: SiteOpt = None) -> None:
    """Co-register every date to a reference -> data/<site>/aligned.zarr and coreg.json."""
    _per_site("coregister", site)


@app.command()
def detect(site: SiteOpt = None) -> None:
    """Find removed and appeared objects -> data/<site>/detections.geojson."""
    _per_site("detect", site)


@app.command()
def tile(
    site: SiteOpt = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            "-m",
            help="pairwise or multidate (default: the config's detect.method).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Detect out of core over the searched Items, window by window, on the configured dask
    cluster (no co-registration) -> data/<site>/tile_detections.geojson and tile.json."""
    _per_site("tile", site, method=method)


@app.command()
def evaluate(site: SiteOpt = None) -> None:
    """Score against ground truth where it exists (the demo) -> metrics/<site>.json."""
    _per_site("evaluate", site)


@app.command()
def report(site: SiteOpt = None) -> None:
    """Write the HTML report -> reports/<site>/index.html."""
    _per_site("report", site)


@app.command()
def run(site: SiteOpt = None) -> None:
    """Run every stage for the site(s): search, load, coregister, detect, evaluate, report."""

    def go() -> None:
        names = _sites(site)
        from pipeline.evaluation.stage import run_site

        for name in names:
            metrics = run_site(_config(), name)
            typer.echo(f"{name}: done: {_summary('evaluate', metrics)}")

    _guard(go)


@app.command()
def where() -> None:
    """Print where the reports and metrics of the configured sites are."""

    def go() -> None:
        from pipeline.paths import site_paths

        cfg = _config()
        for name in cfg.sites:
            p = site_paths(cfg, name)
            state = "" if p.report_html.exists() else "  (not written yet)"
            typer.echo(f"report for {name}: {p.report_html}{state}")
            if p.metrics.exists():
                typer.echo(f"metrics for {name}: {p.metrics}")

    _guard(go)


@app.command(
    help=(
        "Co-register any two rasters (GeoTIFF or JPEG2000, any grid and CRS) and print one JSON "
        "object to stdout: shift_x_px, shift_y_px (where the target's content lies relative to "
        "the reference, reference pixels, east and north positive), shift_x_m, shift_y_m, "
        "quality, status (ok, shifted or failed) and reason; with --local also the tie points "
        "and the affine model.\n\n"
        "Exit code 0 whenever the estimate ran, even when status is failed: read the status (a "
        "failed pair is not aligned and --out writes nothing). An unreadable file or a bad "
        "--band exits with code 5 (DataError)."
    )
)
def align(
    reference: Annotated[Path, typer.Argument(help="Reference raster (GeoTIFF or JPEG2000).")],
    target: Annotated[Path, typer.Argument(help="Raster to register onto the reference.")],
    band: Annotated[
        int, typer.Option("--band", "-b", help="1-based band of both files used for matching.")
    ] = 1,
    local: Annotated[
        bool, typer.Option("--local", help="Also fit a local affine model on a tie-point grid.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write the target (all bands) on the reference grid, corrected: float32 "
            "GeoTIFF, NaN = no data. Not written when the verdict is failed.",
        ),
    ] = None,
) -> None:
    """Co-register any two rasters and print one JSON object (see the command's help)."""

    def go() -> dict:
        from pipeline.stages.align import align_files

        return align_files(reference, target, band=band, local=local, out=out)

    import json

    typer.echo(json.dumps(_guard(go)))


@app.command()
def watch(site: SiteOpt = None) -> None:
    """For cron: process only the scenes that are new since the last run, for every site.

    Appends new detections to data/<site>/detections.geojson and the history database
    (data/watch.sqlite), updates metrics, sends alerts (data/alerts.jsonl, webhook), prints one
    line per site. Locked (a second run exits with code 8) and idempotent (nothing new: no
    file changes). See docs/operations.md.
    """

    def go() -> None:
        names = _sites(site)
        from pipeline.evaluation.stage import watch_metrics
        from pipeline.stages import watch as watching

        report = watching.run_watch(_config(), names, score=watch_metrics)
        for line in report.lines():
            typer.echo(line)
        for line in report.warnings():
            typer.echo(f"basewatch: warning: {line}", err=True)
        for name, exc in report.errors[1:]:
            typer.echo(f"basewatch: error: {name}: {exc}", err=True)
        if report.errors:
            name, exc = report.errors[0]
            raise type(exc)(f"{name}: {exc}")

    _guard(go)


@app.command(
    help=(
        "Change between any two local Sentinel-2 rasters: each of --before and --after is a "
        "folder of single-band files named by band (*_B02.tif ...), a multi-band GeoTIFF with "
        "band descriptions (or --band-order), or a STAC Item JSON with local hrefs. Level-1C "
        "(no SCL) and Level-2A both work. Both dates are put on the grid of the --before "
        "input's 10 m bands, co-registered, normalised and scored; writes change_score.tif, "
        "change_mask.tif (1 = change, 0 = no change, 255 = not scored), detections.geojson "
        "and pair.json into --out. --mode objects finds compact objects (as the site "
        "pipeline); --mode area is for wide change (construction). See docs/detection.md."
    )
)
def pair(
    before: Annotated[Path, typer.Option("--before", help="Input of the earlier date.")],
    after: Annotated[Path, typer.Option("--after", help="Input of the later date.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    mode: Annotated[
        str, typer.Option("--mode", "-m", help="objects (default) or area.")
    ] = "objects",
    band_order: Annotated[
        str | None,
        typer.Option(
            "--band-order",
            help="Bands of a multi-band file without descriptions, in order, comma-separated "
            "(e.g. B02,B03,B04,B08; '-' skips one).",
        ),
    ] = None,
) -> None:
    """Detect the change between two local rasters (see the command's help)."""

    def go() -> dict:
        from pipeline.stages.pair import run_pair

        order = tuple(b.strip() for b in band_order.split(",")) if band_order else None
        return run_pair(before, after, out, _config(), mode=mode, band_order=order)

    s = _guard(go)
    shift = s["coregistration"]
    if shift["status"] == "failed":
        typer.echo(
            f"basewatch: warning: co-registration failed ({shift['reason']}): after date used "
            "as it is",
            err=True,
        )
    sx, sy = shift["shift_x_px"], shift["shift_y_px"]
    where = f"shift {sx:+.2f}, {sy:+.2f} px" if sx is not None and sy is not None else "no shift"
    typer.echo(
        f"pair ({s['mode']}): {s['n_change_px']} change px ({s['change_fraction']:.2%} of "
        f"{s['n_scored_px']} scored), {s['n_objects']} objects ({s['n_removed']} removed, "
        f"{s['n_appeared']} appeared); {where} ({shift['status']}) -> {out}"
    )


@app.command(
    help=(
        "What was removed and what appeared over N local dates: the site pipeline's multi-date "
        "detector without a STAC API. Give one input per date, in any order, each as --before "
        "of `pair` takes it: a folder of single-band files named by band (*_B02.tif ...), a "
        "multi-band GeoTIFF with band descriptions (or --band-order), or a STAC Item JSON with "
        "local hrefs; Level-2A (SCL used as cloud mask) or Level-1C.\n\n"
        "The date of each input is its STAC Item's datetime, else the first YYYYMMDD in the "
        "path (e.g. scenes/20240115/ or S2B_MSIL2A_20240115T083229_...), else in its band file "
        "names; an input without one is an error (rename it). Inputs are sorted by date; two "
        "inputs of the same day are an error (mosaic same-day tiles first). At least 2 dates; "
        "the multi-date test is reliable from 4-6 dates on (fewer: a warning).\n\n"
        "Every date is put on the grid of the earliest input's 10 m bands (a lon/lat or Web "
        "Mercator grid: on the UTM grid of its zone instead), co-registered to the most valid "
        "date (a date that fails is dropped and reported) and searched for signed objects. "
        "Writes detections.geojson (kind, date_before, date_after, area_m2, score, confidence) "
        "and series.json (inputs, dates, grid, co-registration, thresholds, counts) into --out; "
        "a failed run leaves earlier outputs there intact. Exit codes: 5 bad input, 7 fewer "
        "than 2 dates co-registered. See docs/detection.md."
    )
)
def series(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="One input per date: band folder, multi-band GeoTIFF or STAC Item JSON.",
            metavar="DATE_INPUT",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    band_order: Annotated[
        str | None,
        typer.Option(
            "--band-order",
            help="Bands of multi-band files without descriptions, in order, comma-separated "
            "(e.g. B02,B03,B04,B08; '-' skips one).",
        ),
    ] = None,
) -> None:
    """Detect removed and appeared objects over N local dates (see the command's help)."""

    def go() -> dict:
        from pipeline.stages.series import run_series

        order = tuple(b.strip() for b in band_order.split(",")) if band_order else None
        return run_series(inputs, out, _config(), band_order=order)

    from pipeline.stages.series import RECOMMENDED_DATES

    s = _guard(go)
    dates = s["dates"]
    if len(dates) < RECOMMENDED_DATES:
        typer.echo(
            f"basewatch: warning: {len(dates)} dates: the multi-date test averages several views "
            f"on each side of a change; {RECOMMENDED_DATES}-6 or more dates make it reliable",
            err=True,
        )
    coreg = s["coregistration"]
    for d in coreg["dates"]:
        if d["status"] == "failed":
            typer.echo(
                f"basewatch: warning: {d['date']}: co-registration failed ({d['reason']}): "
                "date dropped",
                err=True,
            )
    c = s["counts"]
    typer.echo(
        f"series: {len(s['used_dates'])} of {len(dates)} dates ({dates[0]} .. {dates[-1]}), "
        f"reference {coreg['reference_date']}; {c['n_objects']} objects ({c['n_removed']} "
        f"removed, {c['n_appeared']} appeared) -> {out}"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
