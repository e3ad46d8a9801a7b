"""Benchmark of ``basewatch align`` (pipeline.stages.align.align_files) on generated GeoTIFF pairs.

Each pair is a textured scene written as two GeoTIFFs on DIFFERENT grids (the target's origin is
moved by a whole number of pixels and its size differs), the target's content displaced by a known
sub-pixel shift. Prints one JSON object: the error of the reported shift against the known one
(RMSE and 95th percentile, px) and the seconds per file pair, measured in this run.

Usage: ``python benchmarks/bench_align.py [--pairs N] [--size PX] [--seed S]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage

from pipeline.stages.align import align_files


def _scene(rng: np.random.Generator, n: int) -> np.ndarray:
    img = ndimage.gaussian_filter(rng.normal(size=(n, n)), 3.0) * 0.05 + 0.2
    for _ in range(40):
        r, c = rng.integers(0, n - 20, size=2)
        h, w = rng.integers(3, 18, size=2)
        img[r : r + h, c : c + w] += rng.uniform(-0.08, 0.15)
    return img.astype("float32")


def _fourier_shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Content moved dx px east and dy px north (rows grow southward)."""
    f = ndimage.fourier_shift(np.fft.fftn(img), (-dy, dx))
    return np.fft.ifftn(f).real.astype("float32")


def _write(path: Path, arr: np.ndarray, x0: float, y0: float) -> None:
    profile = {
        "driver": "GTiff",
        "height": arr.shape[0],
        "width": arr.shape[1],
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:32636",
        "transform": from_origin(x0, y0, 10.0, 10.0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr, 1)


def run(pairs: int, size: int, seed: int) -> dict:
    """Align ``pairs`` generated pairs; return errors and timings."""
    rng = np.random.default_rng(seed)
    errors, seconds, statuses = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(pairs):
            big = _scene(rng, size + 64)
            dx, dy = rng.uniform(-3, 3, size=2)
            noise = rng.normal(0, 0.004, size=big.shape).astype("float32")
            moved = _fourier_shift(big, dx, dy) * 1.1 + 0.01 + noise
            off_r, off_c = rng.integers(5, 25, size=2)
            ref = big[32 : 32 + size, 32 : 32 + size]
            tgt = moved[32 - off_r : 32 - off_r + size - 16, 32 - off_c : 32 - off_c + size - 8]
            x0, y0 = 700_000.0, 3_900_000.0
            ref_p, tgt_p = Path(tmp) / f"ref{i}.tif", Path(tmp) / f"tgt{i}.tif"
            _write(ref_p, ref, x0, y0)
            _write(tgt_p, tgt, x0 - 10.0 * off_c, y0 + 10.0 * off_r)
            t0 = time.perf_counter()
            res = align_files(ref_p, tgt_p)
            seconds.append(time.perf_counter() - t0)
            statuses.append(res["status"])
            errors.append(float(np.hypot(res["shift_x_px"] - dx, res["shift_y_px"] - dy)))
    err = np.asarray(errors)
    return {
        "benchmark": "align_files on generated GeoTIFF pairs on different grids",
        "pairs": pairs,
        "size_px": size,
        "rmse_px": round(float(np.sqrt(np.mean(err**2))), 4),
        "p95_px": round(float(np.percentile(err, 95)), 4),
        "max_px": round(float(err.max()), 4),
        "failed": int(sum(s == "failed" for s in statuses)),
        "seconds_per_pair_median": round(float(np.median(seconds)), 3),
    }


def main() -> None:
    """Command-line entry: print the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(json.dumps(run(a.pairs, a.size, a.seed), indent=1))


if __name__ == "__main__":
    main()
