"""Benchmark of the change core and the out-of-core detect stage (prints JSON).

Run from the project root (``make bench``; about 25 minutes on 2 shared cores)::

    .venv/bin/python benchmarks/bench_core.py [--sizes 1024,2048,4096,10980] [--dates 2,24]
        [--methods pairwise,multidate]

Each run is one (method, size, dates) configuration, measured in a fresh subprocess (so its peak
resident memory, ``VmHWM``, is its own); every row has a ``method`` field: ``pairwise`` or
``multidate`` (the stage's ``method``, :mod:`pipeline.stages.tile_series`). Data: generated
(:class:`pipeline.simulate.tile.SyntheticStack`: land-cover scene, per-date gain/offset, noise,
clouds and one planted object per 256 x 256 px, each removed or appeared at one date):

1. **Stage.** After a warm-up (the same stage on a 64 x 64 stack: imports, numba kernels
   compiled or loaded from the cache), :func:`pipeline.stages.tile.detect_tile` over the whole
   ``size`` x ``size`` x 4-band x ``dates`` stack, read lazily window by window (it is never
   held: 24 dates of a full tile are 46 GB of float32), 1024 px chunks (multidate: the stage's
   own choice, :func:`pipeline.stages.tile.series_chunk_px`, as each task holds every date of
   its chunk: ``chunk_px``), dask threads (2).
   ``seconds`` is its wall time, ``peak_rss_mb`` the process peak right after it,
   ``stage_seconds`` its steps (``sample``, ``stream``, ``objects``; multidate also the time its
   tasks spent, summed over tasks, reading or generating the data, on the statistics and on
   labelling: ``stream_task_*``). ``recall`` counts the planted changes found with the right
   sign.
2. **Multi-date core.** For ``multidate`` rows, the dict of ``multidate_core(size, dates,
   seed)`` (the per-pixel multi-date statistics, numba engine, against copy bandwidth and
   against the numpy engine, the unfused in-memory reference) is merged in; nothing else
   follows. Its window is ``min(size, 1024)`` px, so every size from 1024 px up measures the
   same thing: it is measured in the first such row of each date count and copied into the
   others (``core_measured_at_size_px`` says where; about 90 s saved per row at 24 dates).
3. **Core** (``pairwise`` rows). Then, in the same process, after a warm-up, the fused change core
   (:func:`pipeline.kernels.scale.fused.change_core`, full noise model as the stage runs it) on the
   stage's last date pair over a 4096 x 4096 window (a smaller grid is tiled up to it, so that the
   inputs, 600 MB, stream from memory and not from the L3 cache): the before view is the
   last valid view carried through all earlier dates (streamed as the stage does), with the
   stage's own parameters. ``copy_gbps`` = input bytes (both views, both masks, the
   before-date index) per second through :func:`numpy.copyto` into preallocated arrays,
   measured just before; ``core_gbps`` = the same bytes per second through the core, on one
   thread and on all cores of the process (threads over bands of rows), the faster
   reported (``core_threads``; both are kept: ``core_gbps_1thread``); ``ratio_to_copy`` =
   their ratio. ``ratio_to_copy_1thread_no_stencil``: the per-pixel statistic alone (no
   registration/resampling noise stencil). ``speedup_vs_reference`` = time of the plain xarray
   reference (``change_core(..., engine="numpy")``, :mod:`pipeline.kernels.scale.reference`:
   same inputs, same math, unfused) over the fused core's on one thread, on a 2048 x 2048
   window; for that window
   ``reference_gbps``/``reference_ratio_to_copy`` and the peak of memory each allocates
   while it runs (``tracemalloc``: ``reference_peak_alloc_mb``, ``core_peak_alloc_mb``).

Timings on a shared machine are noisy: ratios are measured within one run, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.io.atomic import write_json  # noqa: E402

SIZES = (1024, 2048, 4096, 10980)
"""Grid sides (px) of the runs."""

DATES = (2, 24)
"""Stack lengths of the runs."""

METHODS = ("pairwise", "multidate")
"""Methods of the detect stage measured (``method`` field of every row)."""

CORE_WINDOW_PX = 4096
"""Largest window of the in-memory core measurement (pairwise)."""

MULTIDATE_CORE_WINDOW_PX = 1024
"""Window of the multi-date statistics' measurement: 24 dates of it are 0.8 GB of inputs
(DRAM, not cache) and about 2 GB of fresh outputs."""

MULTIDATE_REFERENCE_WINDOW_PX = 512
"""Window of the multi-date reference comparison (the numpy engine allocates ~10x its input)."""

REFERENCE_WINDOW_PX = 2048
"""Largest window of the reference comparison (the reference needs many full temporaries)."""

MULTIDATE_CORE_FIELDS = (
    "core_pixels",
    "core_threads",
    "core_seconds",
    "copy_gbps",
    "core_gbps",
    "ratio_to_copy",
    "core_gbps_1thread",
    "ratio_to_copy_1thread",
    "input_bytes_per_pixel",
    "output_bytes_per_pixel",
    "io_floor_seconds",
    "ratio_to_copy_io_floor",
    "reference_pixels",
    "reference_seconds",
    "fused_seconds_same_window",
    "speedup_vs_reference",
    "reference_peak_alloc_mb",
    "core_peak_alloc_mb",
    "core_measured_at_size_px",
    "core_parts_seconds",
)
"""Fields of :func:`multidate_core` (and where it ran) copied between rows of one date count."""

STATISTICS = ("noise", "excursion", "step_test")
"""The multi-date statistics, in the detector's order (``core_parts_seconds``'s keys)."""

THREADS = 2
"""Dask threads of the stage."""

CORE_THREADS = os.cpu_count() or 1
"""Threads of the multi-threaded core measurement (one process, every core)."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (``VmHWM``), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_alloc_mb(func: Any) -> float:
    """Peak of memory allocated (numpy included) while ``func`` runs, MiB (``tracemalloc``)."""
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def project_path(path: str | Path) -> str:
    """``path`` relative to the project root when it lies inside it (no machine paths in the
    committed results), else as given."""
    p = Path(path)
    try:
        return p.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def cpu_name() -> str:
    """CPU model of this machine (``/proc/cpuinfo``), with the number of cores."""
    name = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        for line in info.read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cpus"


def best_seconds(func: Any, repeat: int) -> float:
    """Smallest wall time of ``repeat`` calls (after one warm-up call)."""
    func()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def recall(stack: Any, features: list[dict]) -> float:
    """Share of planted changes with a detection of the right sign on their footprint."""
    from pyproj import Transformer

    to_utm = Transformer.from_crs(4326, stack.crs, always_xy=True)
    inv = ~stack.transform
    hits = set()
    boxes = stack.objects()
    for f in features:
        p = f["properties"]
        col, row = inv @ to_utm.transform(p["centroid_lon"], p["centroid_lat"])
        inside = (
            (boxes[:, 0] - 1 <= row)
            & (row <= boxes[:, 1] + 1)
            & (boxes[:, 2] - 1 <= col)
            & (col <= boxes[:, 3] + 1)
            & (boxes[:, 5] == (p["kind"] == "removed"))
        )
        hits.update(np.flatnonzero(inside).tolist())
    return len(hits) / max(1, len(boxes))


def last_pair(stack: Any, size: int, params: list[Any]) -> tuple[np.ndarray, ...]:
    """Inputs of the last pair's core over the top-left ``size`` window, streamed as the stage."""
    from pipeline.io.tile_read import read_window
    from pipeline.kernels.scale.fused import update_last_view

    win = (slice(0, size), slice(0, size))
    prev, prev_ok = read_window(stack, 0, *win)
    prev_idx = np.where(prev_ok, 0, -1).astype(np.int16)
    for t in range(1, stack.n_dates - 1):
        after, after_ok = read_window(stack, t, *win)
        update_last_view(prev, prev_ok, prev_idx, after, after_ok, params[t - 1], t)
        del after, after_ok
    after, after_ok = read_window(stack, stack.n_dates - 1, *win)
    return prev, after, prev_ok, after_ok, prev_idx


def stage_run(size: int, dates: int, seed: int, method: str) -> tuple[dict[str, Any], Any, Any]:
    """The detect stage of ``method`` over a generated stack (step 1 of the module docstring).

    Returns the row's stage fields, the stack and the :class:`TileResult`."""
    from pipeline.config import DetectConfig
    from pipeline.simulate.tile import SyntheticStack
    from pipeline.stages.tile import detect_tile

    cfg = DetectConfig()
    warm = SyntheticStack((64, 64), dates, seed=seed, object_spacing_px=32, period_px=61)
    detect_tile(warm, cfg, method=method, n_threads=THREADS)
    stack = SyntheticStack((size, size), dates, seed=seed)
    start = time.perf_counter()
    result = detect_tile(stack, cfg, method=method, n_threads=THREADS)  # its own chunks
    seconds = time.perf_counter() - start
    stage_peak = peak_rss_mb()
    input_bytes = size * size * dates * (4 * stack.n_bands + 1)
    row = {
        "method": method,
        "pixels": size * size,
        "size_px": size,
        "dates": dates,
        "bands": stack.n_bands,
        "seconds": round(seconds, 3),
        "stage_seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "mpix_dates_per_s": round(size * size * dates / seconds / 1e6, 3),
        "stage_gbps": round(input_bytes / seconds / 1e9, 4),
        "peak_rss_mb": round(stage_peak, 1),
        "objects": len(result.features),
        "planted_changes": len(stack.objects()),
        "recall": round(recall(stack, result.features), 3),
        "threads": THREADS,
        "chunk_px": result.chunk_px,
    }
    return row, stack, result


def child(
    size: int, dates: int, seed: int, method: str = "pairwise", core: bool = True
) -> dict[str, Any]:
    """One run (see the module docstring), in this process; ``core=False``: the multi-date stage
    only (its core fields come from another row)."""
    from pipeline.kernels.scale.change import change_core

    stage, stack, result = stage_run(size, dates, seed, method)
    if method == "multidate":
        if core:
            stage.update(multidate_core(size, dates, seed))
            stage["core_measured_at_size_px"] = size
            stage["peak_rss_mb_with_core_measure"] = round(peak_rss_mb(), 1)
        return stage

    w = min(size, CORE_WINDOW_PX)
    params = result.params[-1]
    inputs = last_pair(stack, w, result.params)
    if w < CORE_WINDOW_PX:  # small grids: tile the pair up, so both copy and core stream DRAM
        reps = -(-CORE_WINDOW_PX // w)
        inputs = tuple(
            np.ascontiguousarray(
                np.tile(a, (1,) * (a.ndim - 2) + (reps, reps))[
                    ..., :CORE_WINDOW_PX, :CORE_WINDOW_PX
                ]
            )
            for a in inputs
        )
        w = CORE_WINDOW_PX
    nbytes = sum(a.nbytes for a in inputs)
    targets = [np.empty_like(a) for a in inputs]

    def copy() -> None:
        for src, dst in zip(inputs, targets, strict=True):
            np.copyto(dst, src)

    def fused(arrays: list[np.ndarray], threads: int = 1, p: Any = params) -> Any:
        return change_core(*arrays[:4], p, before_index=arrays[4], threads=threads)

    plain = replace(params, registration_noise_px=0.0, resampling_blur_px2=0.0)
    copy_s = best_seconds(copy, 5)
    core_nt_s = best_seconds(lambda: fused(inputs, CORE_THREADS), 5)
    core_1t_s = best_seconds(lambda: fused(inputs), 5)
    core_s, threads = min((core_1t_s, 1), (core_nt_s, CORE_THREADS))
    plain_1t_s = best_seconds(lambda: fused(inputs, 1, plain), 5)
    targets.clear()
    r = min(w, REFERENCE_WINDOW_PX)
    sub = [np.ascontiguousarray(a[..., :r, :r]) for a in inputs]
    fused_sub_s = best_seconds(lambda: fused(sub), 3)
    ref_s = best_seconds(
        lambda: change_core(*sub[:4], params, before_index=sub[4], engine="numpy"), 1
    )
    sub_bytes = sum(a.nbytes for a in sub)
    core_alloc = peak_alloc_mb(lambda: fused(sub))
    ref_alloc = peak_alloc_mb(
        lambda: change_core(*sub[:4], params, before_index=sub[4], engine="numpy")
    )
    return {
        **stage,
        "core_pixels": w * w,
        "core_threads": threads,
        "core_seconds": round(core_s, 5),
        "core_gbps": round(nbytes / core_s / 1e9, 3),
        "copy_gbps": round(nbytes / copy_s / 1e9, 3),
        "ratio_to_copy": round(copy_s / core_s, 3),
        "core_gbps_1thread": round(nbytes / core_1t_s / 1e9, 3),
        "ratio_to_copy_1thread": round(copy_s / core_1t_s, 3),
        "ratio_to_copy_1thread_no_stencil": round(copy_s / plain_1t_s, 3),
        "reference_pixels": r * r,
        "reference_seconds": round(ref_s, 4),
        "fused_seconds_same_window": round(fused_sub_s, 5),
        "speedup_vs_reference": round(ref_s / fused_sub_s, 2),
        "reference_gbps": round(sub_bytes / ref_s / 1e9, 4),
        "reference_ratio_to_copy": round(sub_bytes / ref_s / (nbytes / copy_s), 4),
        "reference_mpix_per_s": round(r * r / ref_s / 1e6, 2),
        "core_mpix_per_s": round(w * w / core_s / 1e6, 1),
        "reference_peak_alloc_mb": round(ref_alloc, 1),
        "core_peak_alloc_mb": round(core_alloc, 1),
        "peak_rss_mb_with_core_measure": round(peak_rss_mb(), 1),
    }


def main() -> None:
    """Run every configuration in its own subprocess, write results.json, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--dates", default=",".join(map(str, DATES)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.json"))
    ap.add_argument("--child", nargs=2, type=int, metavar=("SIZE", "DATES"), help=argparse.SUPPRESS)
    ap.add_argument("--method", default="pairwise", help=argparse.SUPPRESS)
    ap.add_argument("--no-core", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        row = child(*args.child, seed=args.seed, method=args.method, core=not args.no_core)
        print(json.dumps(row))
        return
    runs = []
    begin = time.perf_counter()
    for method in args.methods.split(","):
        for dates in map(int, args.dates.split(",")):
            shared_core: dict[str, Any] = {}
            for size in map(int, args.sizes.split(",")):
                runs.append(one_run(method, size, dates, args.seed, shared_core))
                write_json(args.out, runs)  # keep what is measured so far
    sys.stderr.write(f"all runs: {time.perf_counter() - begin:.0f} s, results in {args.out}\n")
    print(json.dumps(runs, indent=1))


def one_run(
    method: str, size: int, dates: int, seed: int, shared_core: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One configuration in a fresh subprocess (its own peak memory), with a progress line.

    ``shared_core``: the multi-date core fields of an earlier row of the same date count (filled
    by the first row of at least :data:`MULTIDATE_CORE_WINDOW_PX`, copied into the later ones).
    """
    cmd = [sys.executable, __file__, "--child", str(size), str(dates), "--seed", str(seed)]
    cmd += ["--method", method]
    reuse = (
        method == "multidate"
        and shared_core is not None
        and bool(shared_core)
        and size >= MULTIDATE_CORE_WINDOW_PX
    )
    if reuse:
        cmd.append("--no-core")
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-3000:])
        raise SystemExit(f"run {method} {size} px x {dates} dates failed (exit {out.returncode})")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    if reuse:
        run.update(shared_core)  # type: ignore[arg-type]
    elif method == "multidate" and shared_core is not None and size >= MULTIDATE_CORE_WINDOW_PX:
        shared_core.update({k: v for k, v in run.items() if k in MULTIDATE_CORE_FIELDS})
    run["machine"] = cpu_name()
    run["run_seconds"] = round(time.perf_counter() - start, 1)
    core = ""
    if "ratio_to_copy" in run:
        core = (
            f", core/copy {run['ratio_to_copy']:.2f}"
            + (
                f" (memory floor {run['ratio_to_copy_io_floor']:.2f})"
                if "ratio_to_copy_io_floor" in run
                else ""
            )
            + ", "
            f"x{run['speedup_vs_reference']:.0f} vs reference"
        )
    sys.stderr.write(
        f"{size:>6} px x {dates:>2} dates, {method}: stage {run['seconds']:8.1f} s, "
        f"peak {run['peak_rss_mb']:7.0f} MiB{core}, recall {run['recall']:.2f} "
        f"({run['run_seconds']:.0f} s)\n"
    )
    return run


def _arrays(obj: Any) -> list[np.ndarray]:
    """The numpy arrays in ``obj`` (an array, or tuples, lists and dataclasses of them)."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = [getattr(obj, f.name) for f in fields(obj)]
    if isinstance(obj, tuple | list):
        return [a for part in obj for a in _arrays(part)]
    return []


def multidate_core(size: int, dates: int, seed: int) -> dict[str, Any]:
    """The multi-date per-pixel statistics against memory copy and the numpy reference.

    Run from the project root (about a minute; the 2048 px window holds about 12 GB)::

        .venv/bin/python -c "import sys, json; sys.path.insert(0, 'benchmarks');
        from bench_core import multidate_core; print(json.dumps(multidate_core(2048, 24, 0)))"

    Inputs, as the detector builds them: a 512 x 512 window of
    :class:`pipeline.simulate.tile.SyntheticStack` (``dates`` dates, 4 bands, clouds, planted
    objects) is normalised and standardised by the detector's own steps
    (:func:`pipeline.kernels.detect.noise.normalise_stack`,
    :func:`pipeline.kernels.detect.noise.noise_model`, the drift and noise floor of
    :func:`pipeline.kernels.detect.series_state.drift`: ``z``, ``var`` float32, ``valid`` bool, the
    smoothed ``slope`` and ``slope_var``), then tiled up to ``size`` x ``size`` (so inputs
    stream from memory, not from the L3 cache). The statistics are the three calls of the
    detector, in its order, with its parameters (:class:`pipeline.config.DetectConfig`):
    ``series_noise``, ``excursion_stat``, ``series_change`` (fresh outputs each call, as the
    detector gets them).

    ``copy_gbps``: input bytes (``z``, ``var``, ``valid``, ``slope``, ``slope_var``) per second
    through :func:`numpy.copyto` into preallocated arrays (one thread); ``core_gbps``: the same
    bytes per second through the three statistics (``engine="numba"``), on one thread and on
    every core (bands of rows), the faster reported (``core_threads``; both kept:
    ``core_gbps_1thread``); ``ratio_to_copy`` = copy time / statistics time;
    ``core_parts_seconds``: each statistic alone (``noise``, ``excursion``, ``step_test``) at
    that thread count, where the statistics' time goes.
    ``io_floor_seconds``: the least memory traffic of any engine with these outputs: every input
    read once (a reduction) and every output written once into fresh arrays, as the detector
    gets them (``output_bytes_per_pixel`` against ``input_bytes_per_pixel``), in bands of rows
    on one thread and on every core, the faster; ``ratio_to_copy_io_floor`` = copy time / that,
    the highest ``ratio_to_copy`` an engine with no arithmetic at all could reach.
    ``speedup_vs_reference``: the numpy engine's time (``engine="numpy"``, one thread) over the
    numba engine's on one thread, on a window of at most 1024 x 1024 (``reference_pixels``);
    ``reference_peak_alloc_mb``/``core_peak_alloc_mb``: peak memory each allocates there
    (``tracemalloc``, outputs included).
    """
    from pipeline.config import DetectConfig
    from pipeline.io.tile_read import read_window
    from pipeline.kernels.detect import multidate, noise
    from pipeline.kernels.detect.series_state import drift, series_thresholds
    from pipeline.simulate.tile import SyntheticStack

    cfg = DetectConfig()
    base = 512
    stack = SyntheticStack((base, base), dates, seed=seed, object_spacing_px=128)
    win = (slice(0, base), slice(0, base))
    reads = [read_window(stack, t, *win) for t in range(dates)]
    x = np.stack([np.where(ok, b, np.nan) for b, ok in reads]).astype(np.float32)
    valid = np.stack([ok for _, ok in reads])
    days = np.arange(dates, dtype=np.float32) * 5.0
    y, _, _ = noise.normalise_stack(x, valid, cfg.max_sample_px)
    nm = noise.noise_model(
        y, valid, window_px=cfg.local_window_px, structure_window_px=cfg.structure_window_px
    )
    floor, slope, slope_var = drift(nm.z, valid, days, cfg)
    var = np.maximum(nm.var, (floor**2)[None]).astype(np.float32)
    size = min(size, MULTIDATE_CORE_WINDOW_PX)
    reps = -(-size // base)

    def tile(a: np.ndarray) -> np.ndarray:
        big = np.tile(a, (1,) * (a.ndim - 2) + (reps, reps))[..., :size, :size]
        return np.ascontiguousarray(big)

    inputs = [tile(a) for a in (nm.z.astype(np.float32), var, valid, slope, slope_var)]
    del x, y, nm, var, reads
    seed_thr, _ = series_thresholds(cfg, stack.n_bands)

    def statistics(
        arrays: list[np.ndarray],
        threads: int = 1,
        engine: str = "numba",
        which: tuple[str, ...] = STATISTICS,
    ) -> list[np.ndarray]:
        """The statistics named in ``which`` (all three: the detector's calls, in its order);
        their output arrays."""
        z, v, ok, sl, sv = arrays
        kw: dict[str, Any] = {"engine": engine, "threads": threads}
        out: list[Any] = []
        if "noise" in which:
            out.append(multidate.series_noise(z, ok, days, trim=cfg.series_noise_trim, **kw))
        if "excursion" in which:
            out.append(multidate.excursion_stat(z, v, ok, **kw))
        if "step_test" in which:
            out.append(
                multidate.series_change(
                    z,
                    v,
                    ok,
                    days,
                    slope=sl,
                    slope_var=sv,
                    window=cfg.window_dates,
                    threshold=seed_thr,
                    max_changes=cfg.max_changes,
                    **kw,
                )
            )
        return _arrays(out)

    nbytes = sum(a.nbytes for a in inputs)
    targets = [np.empty_like(a) for a in inputs]

    def copy() -> None:
        for src, dst in zip(inputs, targets, strict=True):
            np.copyto(dst, src)

    copy_s = best_seconds(copy, 5)
    targets.clear()
    outputs = statistics(inputs)
    out_specs = [(a.shape, a.dtype) for a in outputs]
    out_bytes = sum(a.nbytes for a in outputs)
    del outputs

    def io_rows(outs: list[np.ndarray], r0: int, r1: int) -> None:
        """Rows ``r0:r1``: read every input once, write every output once."""
        for a in inputs:
            (a.view(np.uint8) if a.dtype == bool else a)[..., r0:r1, :].max()
        for out in outs:
            out[..., r0:r1, :] = 1

    def io_floor(threads: int) -> None:
        """:func:`io_rows` into fresh outputs, as the detector gets them, in the engine's bands
        of rows."""
        outs = [np.empty(shape, dtype) for shape, dtype in out_specs]
        multidate.run_rows(io_rows, size, threads, outs)

    floor_s = min(
        best_seconds(lambda: io_floor(1), 5), best_seconds(lambda: io_floor(CORE_THREADS), 5)
    )
    core_1t_s = best_seconds(lambda: statistics(inputs), 3)
    core_nt_s = best_seconds(lambda: statistics(inputs, CORE_THREADS), 3)
    core_s, threads = min((core_1t_s, 1), (core_nt_s, CORE_THREADS))

    parts_s = {
        name: round(best_seconds(lambda n=name: statistics(inputs, threads, which=(n,)), 2), 4)
        for name in STATISTICS
    }
    r = min(size, MULTIDATE_REFERENCE_WINDOW_PX)
    sub = [np.ascontiguousarray(a[..., :r, :r]) for a in inputs]
    inputs.clear()
    fused_sub_s = best_seconds(lambda: statistics(sub), 3)
    ref_s = best_seconds(lambda: statistics(sub, engine="numpy"), 1)
    core_alloc = peak_alloc_mb(lambda: statistics(sub))
    ref_alloc = peak_alloc_mb(lambda: statistics(sub, engine="numpy"))
    return {
        "method": "multidate",
        "dates": dates,
        "bands": stack.n_bands,
        "core_pixels": size * size,
        "core_threads": threads,
        "core_seconds": round(core_s, 4),
        "copy_gbps": round(nbytes / copy_s / 1e9, 3),
        "core_gbps": round(nbytes / core_s / 1e9, 3),
        "ratio_to_copy": round(copy_s / core_s, 3),
        "core_gbps_1thread": round(nbytes / core_1t_s / 1e9, 3),
        "ratio_to_copy_1thread": round(copy_s / core_1t_s, 3),
        "core_parts_seconds": parts_s,
        "input_bytes_per_pixel": round(nbytes / (size * size), 1),
        "output_bytes_per_pixel": round(out_bytes / (size * size), 1),
        "io_floor_seconds": round(floor_s, 4),
        "ratio_to_copy_io_floor": round(copy_s / floor_s, 3),
        "reference_pixels": r * r,
        "reference_seconds": round(ref_s, 3),
        "fused_seconds_same_window": round(fused_sub_s, 4),
        "speedup_vs_reference": round(ref_s / fused_sub_s, 2),
        "reference_peak_alloc_mb": round(ref_alloc, 1),
        "core_peak_alloc_mb": round(core_alloc, 1),
    }


if __name__ == "__main__":
    main()
