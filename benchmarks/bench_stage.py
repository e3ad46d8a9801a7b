"""Benchmark of the whole out-of-core detect stage, from COG files to detections (prints JSON).

Run from the project root (``make bench`` runs it after ``bench_core.py``)::

    .venv/bin/python benchmarks/bench_stage.py [--size 10980] [--dates 4]
        [--methods pairwise,multidate] [--load-chunk 512]

Unlike ``bench_core.py``, whose :class:`pipeline.simulate.tile.SyntheticStack` generates every
window in memory, this run reads files, as users do:

1. **Catalog.** The stack (``size`` x ``size`` px at 10 m in EPSG:32636, ``dates`` dates, 4
   bands, one planted removed/appeared object per 256 px cell, 3 % cloud per date) is written
   by :func:`pipeline.simulate.tile_catalog.write_tile_catalog`: per date one STAC Item
   (simulated, labelled so) with 4 uint16 DEFLATE COGs at 10 m (256 px blocks, L2A offset) and
   an SCL COG at 20 m, under ``build/cogbench/`` (gitignored). A catalog of the same
   parameters is reused (``catalog.reused``); ``catalog.generated_seconds`` is the time it took
   when it was made, reported apart from the stage.
2. **Stage**, one fresh subprocess per method (its peak memory, ``VmHWM``, is its own):
   ``open`` = Items read (pystac) and the lazy cube built by
   :func:`pipeline.io.load.load_cube` (odc-stac, ``--load-chunk`` px dask chunks, harmonised
   reflectance and the SCL mask; nothing read), wrapped in
   :class:`pipeline.io.tile_read.CubeReader`; after a warm-up (the same stage on a 128 px crop
   of the cube: imports, numba kernels, GDAL), :func:`pipeline.stages.tile.detect_tile`
   (``method``, its default chunks, 2 dask threads) over the whole grid; then ``write`` = the
   detections as GeoJSON and GeoParquet (atomic writes, in the catalog's folder).

Fields of a run: ``seconds`` (``detect_tile`` wall), ``peak_rss_mb``, ``recall`` (share of
planted changes found with the right sign, :func:`bench_core.recall`), ``steps_s`` (wall:
``open``, ``sample``, ``stream``, ``objects``, ``write``), ``task_s`` (time summed over dask
tasks, 2 threads: ``read`` = in ``CubeReader.read`` during the stream (odc-stac decoding and
reprojecting COG windows, harmonising, the SCL mask, dask's own work), of it ``read_decode`` =
odc-stac's read tasks (GDAL opening and decoding COG blocks onto the grid), ``statistics``
(multidate: the per-pixel series statistics; pairwise: the fused change core and the chunk's
region labels together, as :func:`pipeline.stages.tile.stream_chunk` does not split them),
``labels`` (multidate: chunk region labels)), ``read_mb`` (float32 bands and mask handed to the
detector by the stream's reads), ``decoded_mb`` (pixels that odc-stac's read tasks decoded onto
the grid, uint16 bands and uint8 SCL: overlapping windows and chunk edges read more than once),
``read_mbps`` = ``read_mb`` / ``task_s.read``, ``decode_mbps`` = ``decoded_mb`` /
``task_s.read_decode``, ``statistics_mbps`` = ``read_mb`` / ``task_s.statistics``: the same
bytes, so ``read_to_statistics`` = ``task_s.read`` / ``task_s.statistics`` says whether reading
or computing dominates.

Measured here (2 vCPUs, AMD EPYC), full tile x 4 dates (figures and tables in
``docs/scaling.md``): writing the catalog took 72-159 s (2.7 GB of COGs, 0.68 GB per date).
With the default reader (``ItemsReader``), idle machine: ``pairwise`` 110 s, peak 777 MiB;
``multidate`` 149 s with its 1024 px chunks (278 s with 512 px), peak 1321 MiB; both recall
0.99 (1830 and 1821 objects for 1764 planted). With the lazy cube's reader and a load average
of about 4, ``pairwise`` took 505 s (reading 19x the change core's task time).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import cpu_name, peak_rss_mb, project_path, recall  # noqa: E402

from pipeline.io.atomic import read_json, write_json  # noqa: E402

SIZE_PX = 10980
"""Grid side of the default run: a whole Sentinel-2 tile at 10 m."""

DATES = 4
"""Dates of the default run (see the module docstring for what it costs)."""

METHODS = ("pairwise", "multidate")
"""Methods of :func:`pipeline.stages.tile.detect_tile` measured."""

LOAD_CHUNK_PX = 512
"""Dask chunk of the lazy cube (odc-stac): 256 and 1024 px read a 1088 px window slower."""

THREADS = 2
"""Dask threads of the stage."""

WARM_PX = 128
"""Side of the warm-up crop."""

BUILD = ROOT / "build" / "cogbench"
"""Folder of the generated catalogs (gitignored)."""

BANDS = ("blue", "green", "red", "nir")
"""Bands loaded and compared."""

READERS = ("items", "cube")
"""Window readers of the stage: ``items`` (:class:`pipeline.io.tile_read.ItemsReader`, what
``basewatch tile`` uses: each window loaded from the COGs on its own) and ``cube``
(:class:`pipeline.io.tile_read.CubeReader`: each window computed from the lazy cube's chunks)."""

PROBE_WINDOWS = 12
"""Stream windows re-read after the stage to split reading into decoding and the rest."""


def catalog_folder(build: Path, size: int, dates: int, seed: int) -> Path:
    """Folder of the catalog of one (size, dates, seed)."""
    return build / f"tile_{size}px_{dates}d_seed{seed}"


def ensure_catalog(size: int, dates: int, seed: int, build: Path = BUILD) -> dict[str, Any]:
    """Write the catalog of (size, dates, seed), or reuse the one already there (step 1)."""
    from pipeline.simulate.tile import SyntheticStack
    from pipeline.simulate.tile_catalog import catalog_matches, write_tile_catalog

    stack = SyntheticStack((size, size), dates, seed=seed)
    folder = catalog_folder(build, size, dates, seed)
    if catalog_matches(folder, stack) and (folder / "generation.json").is_file():
        info = read_json(folder / "generation.json")
        info["reused"] = True
        return info
    made = write_tile_catalog(stack, folder)
    info = {
        "folder": str(folder),
        "size_px": size,
        "dates": dates,
        "seed": seed,
        "generated_seconds": made["seconds"],
        "generated_seconds_per_date": made["seconds_per_date"],
        "cog_mb": round(made["cog_bytes"] / 1e6, 1),
        "reused": False,
    }
    write_json(folder / "generation.json", info)
    return info


class TimedReader:
    """A :class:`pipeline.io.tile_read.StackReader` that times each read of the one it wraps
    (a reader with ``read_many``, as :class:`pipeline.io.tile_read.CubeReader`).

    Reads are split into ``sample`` (windows of at most the sample side) and ``stream``;
    thread-safe (dask's threads read at the same time).
    """

    def __init__(self, inner: Any, sample_px: int) -> None:
        self.inner = inner
        self.shape = inner.shape
        self.n_dates = inner.n_dates
        self.n_bands = inner.n_bands
        self.crs = inner.crs
        self._sample_px = sample_px
        self._lock = threading.Lock()
        self.seconds = {"sample": 0.0, "stream": 0.0}
        self.bytes = {"sample": 0, "stream": 0}
        self.windows: list[tuple[int, slice, slice]] = []
        """Every stream read (date, rows, cols), in the order they ended."""

    def __dask_tokenize__(self) -> tuple[str, Any]:
        return ("TimedReader", self.inner.__dask_tokenize__())

    @property
    def dates(self) -> list[str]:
        """ISO date of each date index."""
        return self.inner.dates

    @property
    def transform(self) -> Any:
        """Affine transform of the grid."""
        return self.inner.transform

    def read(self, t: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """(B, h, w) float32 bands and (h, w) validity of date ``t`` (the inner reader's
        ``read``, timed)."""
        return self._timed(t, [(rows, cols)], lambda: [self.inner.read(t, rows, cols)])[0]

    def read_many(
        self, t: int, windows: list[tuple[slice, slice]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`read` of several windows of date ``t`` in one call of the inner reader's
        ``read_many`` (as the stage reads its sample), timed as one read."""
        return self._timed(t, windows, lambda: self.inner.read_many(t, windows))

    def _timed(
        self, t: int, windows: list[tuple[slice, slice]], read: Any
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``read()``, timed as ``sample`` when every window is at most the sample side, else
        as ``stream``."""
        start = time.perf_counter()
        parts = read()
        seconds = time.perf_counter() - start
        big = any(r.stop - r.start > self._sample_px for r, _ in windows)
        part = "stream" if big else "sample"
        with self._lock:
            self.seconds[part] += seconds
            self.bytes[part] += sum(b.size * 4 + v.size for b, v in parts)
            if part == "stream":
                self.windows.extend((t, r, c) for r, c in windows)
        return parts


def read_layers(cube: Any) -> set[str]:
    """Names of the graph layers of odc-stac's read tasks (one per band, SCL included)."""
    names = "|".join(re.escape(v) for v in (*BANDS, "scl"))
    pattern = re.compile(rf"({names})-[0-9a-f]{{32}}")
    return {n for n in cube.__dask_graph__().layers if pattern.fullmatch(str(n))}


def decode_meter(layers: set[str]) -> Any:
    """A dask callback summing the time and output bytes of the read tasks of ``layers``.

    The reader computes each window with the synchronous scheduler inside its task, so a read
    task starts and ends in one thread: timings are keyed by (thread, key).
    """
    from dask.callbacks import Callback

    class DecodeMeter(Callback):
        def __init__(self) -> None:
            super().__init__()
            self.lock = threading.Lock()
            self.started: dict[tuple[int, Any], float] = {}
            self.seconds = 0.0
            self.bytes = 0
            self.tasks = 0

        def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
            name = key[0] if isinstance(key, tuple) else key
            if name in layers:
                self.started[(threading.get_ident(), key)] = time.perf_counter()

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker: Any) -> None:
            start = self.started.pop((threading.get_ident(), key), None)
            if start is not None:
                with self.lock:
                    self.seconds += time.perf_counter() - start
                    self.bytes += int(getattr(result, "nbytes", 0))
                    self.tasks += 1

    return DecodeMeter()


def probe_decode(timed: TimedReader, layers: set[str], n: int = PROBE_WINDOWS) -> dict[str, float]:
    """Re-read ``n`` of the stream's windows (spread over its reads) alone, in this thread,
    with odc-stac's read tasks timed: the share of a read spent decoding, and the bytes decoded
    per byte handed over.

    The stage's own reads run inside the threaded scheduler, which switches dask callbacks off
    for the computes nested in its tasks: the read tasks cannot be timed there.
    """
    picks = np.unique(np.linspace(0, len(timed.windows) - 1, n).round().astype(int))
    meter = decode_meter(layers)
    read_s, read_b = 0.0, 0
    with meter:
        for i in picks:
            t, rows, cols = timed.windows[int(i)]
            start = time.perf_counter()
            bands, valid = timed.inner.read(t, rows, cols)
            read_s += time.perf_counter() - start
            read_b += bands.size * 4 + valid.size
    return {
        "windows": len(picks),
        "read_s": round(read_s, 3),
        "decode_s": round(meter.seconds, 3),
        "read_mb": round(read_b / 1e6, 2),
        "decoded_mb": round(meter.bytes / 1e6, 2),
        "decode_tasks": meter.tasks,
    }


def child(
    method: str,
    folder: Path,
    size: int,
    dates: int,
    seed: int,
    load_chunk: int,
    reader_kind: str = "items",
) -> dict[str, Any]:
    """One method's run with one reader (step 2 of the module docstring), in this process."""
    import geopandas  # noqa: F401  (imported before the clock: the writer's import)
    from odc.geo.geobox import GeoBox

    from pipeline.config import DetectConfig
    from pipeline.io.load import load_cube
    from pipeline.io.report.products import write_detections_parquet
    from pipeline.io.tile_read import SAMPLE_WINDOW_PX, CubeReader, ItemsReader
    from pipeline.simulate.tile import SyntheticStack
    from pipeline.simulate.tile_catalog import read_tile_items
    from pipeline.stages.tile import detect_tile

    cfg = DetectConfig()
    stack = SyntheticStack((size, size), dates, seed=seed)  # its truth only: recall
    steps: dict[str, float] = {}
    start = time.perf_counter()
    items = read_tile_items(folder / "catalog.json")
    geobox = GeoBox(stack.shape, stack.transform, stack.crs)
    cube = load_cube(items, geobox, BANDS, chunk_px=load_chunk)

    def make_reader(c: Any) -> Any:
        if reader_kind == "cube":
            return CubeReader(c, BANDS)
        return ItemsReader(c, items, BANDS)

    reader = make_reader(cube)
    steps["open"] = time.perf_counter() - start

    warm = min(WARM_PX, size)
    start = time.perf_counter()
    crop = make_reader(cube.isel(y=slice(0, warm), x=slice(0, warm)))
    detect_tile(crop, cfg, method=method, n_threads=THREADS)  # type: ignore[arg-type]
    warm_s = time.perf_counter() - start

    timed = TimedReader(reader, SAMPLE_WINDOW_PX)
    start = time.perf_counter()
    result = detect_tile(timed, cfg, method=method, n_threads=THREADS)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    stage_peak = peak_rss_mb()
    steps.update(result.seconds)
    task = {"read": timed.seconds["stream"]}
    probe: dict[str, Any] | None = None
    decode_share = None
    if reader_kind == "cube":  # odc-stac's read tasks are dask tasks only on the cube's graph
        probe = probe_decode(timed, read_layers(cube))
        decode_share = probe["decode_s"] / max(probe["read_s"], 1e-9)
        task["read_decode"] = decode_share * timed.seconds["stream"]
    if method == "multidate":
        task["statistics"] = result.seconds["stream_task_statistics"]
        task["labels"] = result.seconds["stream_task_labels"]
        task["read_in_stage"] = result.seconds["stream_task_read"]
    else:  # the stream's task time, less its reads (threads busy for the whole stream)
        task["statistics"] = max(THREADS * result.seconds["stream"] - task["read"], 1e-9)
    for key in [k for k in steps if k.startswith("stream_task_")]:
        del steps[key]

    start = time.perf_counter()
    detections = {"type": "FeatureCollection", "features": result.features}
    write_json(folder / f"detections_{method}.geojson", detections)
    write_detections_parquet(detections, folder / f"detections_{method}.parquet")
    steps["write"] = time.perf_counter() - start

    read_mb = timed.bytes["stream"] / 1e6
    decoded_mb = decode_mbps = None
    if probe is not None:
        decoded_mb = round(read_mb * probe["decoded_mb"] / max(probe["read_mb"], 1e-9), 1)
        decode_mbps = round(probe["decoded_mb"] / max(probe["decode_s"], 1e-9), 1)
    return {
        "method": method,
        "reader": reader_kind,
        "size_px": size,
        "dates": dates,
        "bands": len(BANDS),
        "load_chunk_px": load_chunk,
        "threads": THREADS,
        "seconds": round(seconds, 2),
        "chunk_px": result.chunk_px,
        "warmup_seconds": round(warm_s, 2),
        "peak_rss_mb": round(stage_peak, 1),
        "steps_s": {k: round(v, 2) for k, v in steps.items()},
        "task_s": {k: round(v, 2) for k, v in task.items()},
        "read_mb": round(read_mb, 1),
        "decoded_mb": decoded_mb,
        "read_mbps": round(read_mb / max(task["read"], 1e-9), 1),
        "decode_mbps": decode_mbps,
        "decode_share": None if decode_share is None else round(decode_share, 3),
        "probe": probe,
        "statistics_mbps": round(read_mb / task["statistics"], 1),
        "read_to_statistics": round(task["read"] / task["statistics"], 2),
        "sample_read_s": round(timed.seconds["sample"], 2),
        "mpix_dates_per_s": round(size * size * dates / seconds / 1e6, 3),
        "objects": len(result.features),
        "planted_changes": len(stack.objects()),
        "recall": round(recall(stack, result.features), 3),
    }


def run_method(
    method: str,
    folder: Path,
    size: int,
    dates: int,
    seed: int,
    load_chunk: int,
    reader: str = "items",
) -> dict[str, Any]:
    """One method with one reader in a fresh subprocess (its own peak memory), with a
    progress line."""
    cmd = [sys.executable, __file__, "--child", method, str(folder)]
    cmd += ["--size", str(size), "--dates", str(dates), "--seed", str(seed)]
    cmd += ["--load-chunk", str(load_chunk), "--readers", reader]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"stage {method} {size} px x {dates} dates failed (exit {out.returncode})")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    run["run_seconds"] = round(time.perf_counter() - start, 1)
    t = run["task_s"]
    sys.stderr.write(
        f"{size:>6} px x {dates:>2} dates, {method} ({reader}): stage {run['seconds']:7.1f} s, "
        f"peak {run['peak_rss_mb']:6.0f} MiB, read {t['read']:.0f} task-s ({run['read_mbps']:.0f} "
        f"MB/s), statistics {t['statistics']:.0f} task-s ({run['statistics_mbps']:.0f} MB/s), "
        f"recall {run['recall']:.2f} ({run['run_seconds']:.0f} s)\n"
    )
    return run


def bench(
    size: int,
    dates: int,
    methods: list[str],
    seed: int = 0,
    load_chunk: int = LOAD_CHUNK_PX,
    build: Path = BUILD,
    out: Path | None = None,
    readers: tuple[str, ...] = READERS,
) -> dict[str, Any]:
    """Catalog, then each method's run with each reader; the report (written to ``out`` as
    each run ends)."""
    begin = time.perf_counter()
    catalog = ensure_catalog(size, dates, seed, build)
    sys.stderr.write(
        f"catalog {size} px x {dates} dates: "
        + ("reused" if catalog["reused"] else f"written in {catalog['generated_seconds']:.0f} s")
        + f" ({catalog['cog_mb']:.0f} MB of COGs)\n"
    )
    shown = {**catalog, "folder": project_path(catalog["folder"])}  # no machine path
    report: dict[str, Any] = {"machine": cpu_name(), "catalog": shown, "runs": []}
    for method in methods:
        for reader in readers:
            folder = Path(catalog["folder"])
            run = run_method(method, folder, size, dates, seed, load_chunk, reader)
            report["runs"].append(run)
            if out is not None:
                write_json(out, report)  # keep what is measured so far
    report["total_seconds"] = round(time.perf_counter() - begin, 1)
    if out is not None:
        write_json(out, report)
    return report


def main() -> None:
    """Parse the options; run the benchmark (or, with ``--child``, one method) and print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=SIZE_PX, help="grid side, px")
    ap.add_argument("--dates", type=int, default=DATES, help="number of dates")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--load-chunk", type=int, default=LOAD_CHUNK_PX, help="cube chunk, px")
    ap.add_argument("--readers", default=",".join(READERS), help="items, cube or both")
    ap.add_argument("--build", default=str(BUILD), help="folder of the generated catalogs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_stage.json"))
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, folder = args.child
        reader = args.readers.split(",")[0]
        run = child(method, Path(folder), args.size, args.dates, args.seed, args.load_chunk, reader)
        print(json.dumps(run))
        return
    readers = tuple(r for r in args.readers.split(",") if r)
    if not readers or any(r not in READERS for r in readers):
        raise SystemExit(f"--readers {args.readers!r}: use some of {', '.join(READERS)}")
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SystemExit(f"--methods {args.methods!r}: use some of {', '.join(METHODS)}")
    if args.size < 64 or args.dates < 2:
        raise SystemExit("--size must be at least 64 px and --dates at least 2")
    report = bench(
        args.size,
        args.dates,
        methods,
        args.seed,
        args.load_chunk,
        Path(args.build),
        Path(args.out),
        readers,
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
