"""The whole-tile multi-date stage on threads and on a LocalCluster of processes (prints JSON).

Run from the project root (about 3 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_cluster.py [--size 2048] [--dates 24]

One generated stack (:class:`pipeline.simulate.tile.SyntheticStack`, simulated), the same
:func:`pipeline.stages.tile.detect_tile` call (``method="multidate"``) three times after a
warm-up: on dask threads of this process (``threads``), on a ``distributed.LocalCluster`` of
``workers`` processes with one thread each, and on a LocalCluster of one process (the
throughput of one worker). Each reports its wall time, Mpx·dates per second in all and per
worker, and whether its features equal the threads run's. Timings on a shared machine are
noisy: the three runs are side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(stack: Any, client: Any) -> tuple[float, list[dict]]:
    """Wall time and features of the multi-date tile stage on ``client`` (None: threads)."""
    from pipeline.config import DetectConfig
    from pipeline.stages.tile import detect_tile

    start = time.perf_counter()
    result = detect_tile(stack, DetectConfig(), method="multidate", client=client)
    return time.perf_counter() - start, result.features


def main() -> None:
    """Measure, print JSON."""
    from pipeline.io.cluster import dask_client
    from pipeline.simulate.tile import SyntheticStack

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--dates", type=int, default=24)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    stack = SyntheticStack((args.size, args.size), args.dates, seed=0)
    run(SyntheticStack((64, 64), args.dates, seed=0, object_spacing_px=32, period_px=61), None)
    pixel_dates = args.size * args.size * args.dates
    seconds, reference = run(stack, None)
    rows = [{"where": "threads", "workers": 1, "threads": 2, "seconds": round(seconds, 2)}]
    for n in (args.workers, 1):
        with dask_client("processes", n_workers=n, threads_per_worker=1, memory_limit="3GiB") as c:
            run(SyntheticStack((64, 64), args.dates, seed=0, object_spacing_px=32, period_px=61), c)
            seconds, features = run(stack, c)
        rows.append(
            {
                "where": f"LocalCluster of {n} process(es)",
                "workers": n,
                "threads": n,
                "seconds": round(seconds, 2),
                "equal_to_threads": json.dumps(features, sort_keys=True)
                == json.dumps(reference, sort_keys=True),
            }
        )
    for row in rows:
        row["mpix_dates_per_s"] = round(pixel_dates / row["seconds"] / 1e6, 2)
        row["mpix_dates_per_s_per_worker"] = round(row["mpix_dates_per_s"] / row["workers"], 2)
    print(json.dumps({"size_px": args.size, "dates": args.dates, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
