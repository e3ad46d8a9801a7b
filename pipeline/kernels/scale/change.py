"""The per-pixel change core of a date pair behind one entry point (pure: arrays in, arrays out).

:func:`change_core` is the one public function (the xarray-spatial pattern of
``../shared/STYLE.md``): it checks the inputs, then picks the implementation

- by ``engine``: ``"numba"`` (default) runs the fused compiled loop
  (:func:`pipeline.kernels.scale.fused.core_numba`), ``"numpy"`` the same maths written plainly
  as whole-array xarray expressions (:func:`pipeline.kernels.scale.reference.change_core_reference`,
  the yardstick of the fused loop's speed and bits);
- by the input type: numpy in, numpy out; any dask input gives lazy dask out, the chosen engine
  running per chunk with a one-pixel margin (``boundary="none"``) when a structure term needs
  the neighbours, so numpy and dask results are the same bits.

The detector's pair kernel :func:`pipeline.kernels.detect.pairwise.pair_change` is not behind
it: it also fits the pair's radiometry, subtracts the local change level, takes the local noise,
guards thin cloud, smooths and signs, and its per-pixel noise is ``max(group sigma, local MAD)``
rather than the group sigma alone, so its numbers are its own (see ``docs/architecture.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import dask.array as da
import numpy as np

from pipeline.errors import DataError
from pipeline.kernels.scale.fused import CoreParams, CoreResult, classify, core_numba
from pipeline.kernels.scale.reference import change_core_reference

__all__ = ["ENGINES", "Engine", "change_core"]

Engine = Literal["numba", "numpy"]
ENGINES: tuple[str, ...] = ("numba", "numpy")
"""The implementations :func:`change_core` can run."""


def change_core(
    before: Any,
    after: Any,
    before_ok: Any,
    after_ok: Any,
    params: CoreParams,
    *,
    before_index: Any = None,
    engine: Engine = "numba",
    threads: int = 1,
) -> CoreResult:
    """Score and class of the change between two views (numpy -> numpy, dask -> dask).

    Parameters
    ----------
    before, after
        (B, y, x) float32 views (``before``: the last valid view of each pixel).
    before_ok, after_ok
        (y, x) bool: the views are valid.
    params
        Per-pair parameters (see :func:`pipeline.kernels.scale.fused.core_params`).
    before_index
        (y, x) int date index of each pixel's before view (selects the per-date level and
        sigma); None when ``params`` holds one group.
    engine
        ``"numba"`` (the fused compiled loop, default) or ``"numpy"`` (plain whole-array
        expressions: slower, more memory; for checking and benchmarking).
    threads
        Threads of the numba engine on numpy input (bands of rows in parallel, the compiled loop
        releases the GIL; same result); dask input runs one thread per chunk task.

    Returns
    -------
    CoreResult
        Score and class; lazy when any input is a dask array.

    Raises
    ------
    DataError
        When shapes or band counts disagree, or the engine is unknown.
    """
    if engine not in ENGINES:
        raise DataError(f"engine {engine!r} is not one of {', '.join(ENGINES)}: pick one of them")
    _check(before, after, before_ok, after_ok, params)
    if before_index is None and params.group_level.shape[0] != 1:
        raise DataError(
            f"parameters hold {params.group_level.shape[0]} before-date groups: pass "
            "before_index= (the date index of each pixel's before view)"
        )
    arrays = (before, after, before_ok, after_ok, before_index)
    lazy = any(isinstance(a, da.Array) for a in arrays)
    if engine == "numba":
        if not lazy:
            score, cls = core_numba(*arrays, params, threads=threads)
            return CoreResult(score=score, cls=cls)
        score = _per_chunk(_numba_score, *arrays, params)
        return CoreResult(
            score=score, cls=classify(score, params.seed_threshold, params.grow_threshold)
        )
    if not lazy:
        score, cls = _numpy_engine(*arrays, params)
        return CoreResult(score=score, cls=cls)
    packed = _per_chunk(_numpy_packed, *arrays, params, planes=2)
    return CoreResult(score=packed[0], cls=packed[1].astype(np.uint8))


def _check(before: Any, after: Any, before_ok: Any, after_ok: Any, params: CoreParams) -> None:
    if before.ndim != 3 or before.shape != after.shape:
        raise DataError(
            f"before {before.shape} and after {after.shape} must both be (bands, y, x) of one "
            "shape: stack the bands of both views on one grid"
        )
    if before_ok.shape != before.shape[1:] or after_ok.shape != before.shape[1:]:
        raise DataError(
            f"masks {before_ok.shape}/{after_ok.shape} do not match the grid "
            f"{before.shape[1:]}: give one (y, x) bool mask per view"
        )
    if before.shape[0] != params.n_bands:
        raise DataError(
            f"{before.shape[0]} bands but parameters for {params.n_bands}: fit the radiometry "
            "on the same bands"
        )


def _numpy_engine(
    before: Any, after: Any, before_ok: Any, after_ok: Any, index: Any, p: CoreParams
) -> tuple[np.ndarray, np.ndarray]:
    if index is None or p.group_level.shape[0] == 1:
        index = None
    return change_core_reference(
        np.asarray(before),
        np.asarray(after),
        np.asarray(before_ok),
        np.asarray(after_ok),
        p,
        before_index=None if index is None else np.asarray(index),
    )


def _numba_score(*args: Any) -> np.ndarray:
    return core_numba(*args)[0]


def _numpy_packed(*args: Any) -> np.ndarray:
    score, cls = _numpy_engine(*args)
    return np.stack([score, cls.astype(np.float32)])


def _per_chunk(
    func: Callable[..., np.ndarray],
    before: Any,
    after: Any,
    before_ok: Any,
    after_ok: Any,
    index: Any,
    p: CoreParams,
    *,
    planes: int = 0,
) -> Any:
    """``func(before, after, before_ok, after_ok, index, p)`` per spatial chunk, with a
    one-pixel margin when a structure term is on: (y, x) out, or (planes, y, x) when
    ``planes``."""
    before = da.asarray(before).rechunk({0: -1})
    after = da.asarray(after).rechunk(before.chunks)
    before_ok = da.asarray(before_ok).rechunk(before.chunks[1:])
    after_ok = da.asarray(after_ok).rechunk(before.chunks[1:])
    grid = [before, after, before_ok, after_ok]
    with_index = index is not None and p.group_level.shape[0] > 1
    if with_index:
        grid.append(da.asarray(index).rechunk(before.chunks[1:]))
    margin = 1 if p.stencil else 0
    if margin:
        grid = [
            da.overlap.overlap(
                a,
                depth={**dict.fromkeys(range(a.ndim - 2), 0), a.ndim - 2: 1, a.ndim - 1: 1},
                boundary="none",
            )
            for a in grid
        ]

    def block(b: np.ndarray, a: np.ndarray, bo: np.ndarray, ao: np.ndarray, *rest: Any) -> Any:
        idx = rest[0] if with_index else None
        return func(b, a, bo, ao, idx, p)

    if planes:
        out = da.map_blocks(
            block,
            *grid,
            chunks=((planes,), *grid[2].chunks),
            dtype=np.float32,
            meta=np.empty((0, 0, 0), dtype=np.float32),
        )
        depth = {0: 0, 1: margin, 2: margin}
    else:
        out = da.map_blocks(
            block, *grid, drop_axis=0, dtype=np.float32, meta=np.empty((0, 0), dtype=np.float32)
        )
        depth = {0: margin, 1: margin}
    if margin:
        out = da.overlap.trim_internal(out, depth, boundary="none")
    return out
