"""Chunk-border-correct hysteresis labelling without a full-size label raster (pure numpy).

A tile is scored chunk by chunk, each chunk read with a margin (its *window*). The objects of a
date pair are the connected regions (8-connectivity) of pixels above the grow threshold that
hold at least one seed pixel. Only a sparse set of pixels can belong to one, so each chunk
reports its **candidates**, and the regions are joined across chunks from the candidates alone:

1. :func:`chunk_regions`: label the grow pixels of the window's *trusted* part (the window less
   a one-pixel ring, whose stencil saw no neighbours). A local region is a candidate when it
   holds a seed and is large enough (``min_pixels``), or when it touches a cut side of the
   trusted part (it may go on, seeded, in the next chunk). A region that touches no cut side is
   whole: if it has no seed or is too small, it can never become an object, and is dropped here.
   Each chunk reports the candidates of its own *inner* part (the chunks' inner parts tile the
   array, so every pixel is reported by one chunk).
2. :func:`removal_margin`: the removal margin of :mod:`pipeline.kernels.detect.pairwise` at the
   candidate pixels, from :func:`pipeline.kernels.detect.neighbourhood.surroundings` on a small crop
   around each region.
   The crop starts on the global block grid and reaches past the background's footprint, so the
   value equals that of the whole array, whatever the chunking.
3. :func:`sparse_components`: the 8-connected components of all candidates of the tile (sorted
   flat indices, neighbours by binary search, :func:`scipy.sparse.csgraph.connected_components`).
   Every pixel of a seeded region is a candidate (its local region was seeded, or cut), so the
   seeded components are exactly the seeded regions of the whole array. Memory grows with the
   number of candidates, not with the tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.errors import DataError
from pipeline.kernels.detect.neighbourhood import (
    BACKGROUND_WINDOW_BLOCKS,
    background_block_px,
    surroundings,
)

EIGHT = np.ones((3, 3), dtype=bool)
"""8-connectivity structuring element."""


@dataclass(frozen=True)
class Candidates:
    """Candidate pixels of one date pair (global pixel coordinates)."""

    rows: np.ndarray
    """(n,) int32 row of each pixel."""
    cols: np.ndarray
    """(n,) int32 column."""
    score: np.ndarray
    """(n,) float32 score."""
    seed: np.ndarray
    """(n,) bool: at or above the seed threshold."""
    removed: np.ndarray
    """(n,) float32 removal margin (> 0: the after view is closer to its background)."""
    before_index: np.ndarray
    """(n,) int16 date index of the pixel's before view."""

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @classmethod
    def empty(cls) -> Candidates:
        """No candidates."""
        return cls(
            rows=np.zeros(0, np.int32),
            cols=np.zeros(0, np.int32),
            score=np.zeros(0, np.float32),
            seed=np.zeros(0, bool),
            removed=np.zeros(0, np.float32),
            before_index=np.zeros(0, np.int16),
        )

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        """All ``parts`` in one set, in order."""
        if not parts:
            return cls.empty()
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )

    def take(self, index: np.ndarray) -> Candidates:
        """The candidates at ``index`` (integer or bool)."""
        return Candidates(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass(frozen=True)
class Window:
    """Where a chunk lies in its window and in the array (all half-open pixel ranges)."""

    rows: tuple[int, int]
    """Rows of the window in the array."""
    cols: tuple[int, int]
    """Columns of the window in the array."""
    inner_rows: tuple[int, int]
    """Rows of the chunk itself in the array."""
    inner_cols: tuple[int, int]
    """Columns of the chunk itself in the array."""
    shape: tuple[int, int]
    """Shape of the whole array."""

    @property
    def trusted(self) -> tuple[slice, slice]:
        """Window slices whose score saw all neighbours (less one pixel on cut sides)."""
        (r0, r1), (c0, c1) = self.rows, self.cols
        ny, nx = self.shape
        return (
            slice(1 if r0 > 0 else 0, (r1 - r0) - (1 if r1 < ny else 0)),
            slice(1 if c0 > 0 else 0, (c1 - c0) - (1 if c1 < nx else 0)),
        )

    @property
    def cut(self) -> tuple[bool, bool, bool, bool]:
        """Top, bottom, left, right sides of the trusted part that are not array edges."""
        (r0, r1), (c0, c1) = self.rows, self.cols
        ny, nx = self.shape
        return r0 > 0, r1 < ny, c0 > 0, c1 < nx

    @property
    def inner(self) -> tuple[slice, slice]:
        """Window slices of the chunk itself."""
        (r0, _), (c0, _) = self.rows, self.cols
        (i0, i1), (j0, j1) = self.inner_rows, self.inner_cols
        return slice(i0 - r0, i1 - r0), slice(j0 - c0, j1 - c0)


def window_grid(shape: tuple[int, int], chunk_px: int, margin_px: int) -> list[Window]:
    """Chunks of ``chunk_px`` square tiling ``shape``, each with a ``margin_px`` window margin.

    Parameters
    ----------
    shape
        (rows, cols) of the array.
    chunk_px
        Chunk side (the last row/column of chunks may be smaller).
    margin_px
        Margin added on every side (clipped to the array).

    Returns
    -------
    list of Window
        In row-major order of chunks.
    """
    ny, nx = shape
    out = []
    for i0 in range(0, ny, chunk_px):
        for j0 in range(0, nx, chunk_px):
            i1, j1 = min(i0 + chunk_px, ny), min(j0 + chunk_px, nx)
            out.append(
                Window(
                    rows=(max(i0 - margin_px, 0), min(i1 + margin_px, ny)),
                    cols=(max(j0 - margin_px, 0), min(j1 + margin_px, nx)),
                    inner_rows=(i0, i1),
                    inner_cols=(j0, j1),
                    shape=(ny, nx),
                )
            )
    return out


def margin_reach_px(window_px: int) -> tuple[int, int]:
    """Grid alignment and reach (px) of the crops of :func:`removal_margin`.

    :func:`pipeline.kernels.detect.neighbourhood.surroundings` takes block medians over windows of
    about ``window_px / 4`` and ``window_px``; a crop that starts on a multiple of both block sizes
    and reaches ``BACKGROUND_WINDOW_BLOCKS // 2`` blocks past the pixels gives them their
    whole-array value.

    Returns
    -------
    align : int
        Crops start on multiples of this.
    reach : int
        Largest distance (px) from a pixel to the crop edge it needs.
    """
    blocks = {background_block_px(max(3, w)) for w in (window_px // 4, window_px)}
    align = math.lcm(*blocks)
    reach = max(blocks) * (BACKGROUND_WINDOW_BLOCKS // 2) + align
    return align, reach


def chunk_regions(cls: np.ndarray, window: Window, min_pixels: int) -> np.ndarray:
    """Candidate regions of one window (step 1 of the module docstring).

    Parameters
    ----------
    cls
        (h, w) uint8 classes of the window (0 quiet, 1 grow, 2 seed, 255 not scored).
    window
        Where the window lies.
    min_pixels
        Smallest object.

    Returns
    -------
    numpy.ndarray
        (inner h, inner w) int32 local region of each inner pixel (its label in the trusted
        part), 0 where not a candidate.
    """
    sub = cls[window.trusted]
    grow = (sub == 1) | (sub == 2)
    lab, n = ndimage.label(grow, EIGHT)
    ts, inner = window.trusted, window.inner
    inner_rel = (
        slice(inner[0].start - ts[0].start, inner[0].stop - ts[0].start),
        slice(inner[1].start - ts[1].start, inner[1].stop - ts[1].start),
    )
    if n == 0:
        return np.zeros(cls[inner].shape, np.int32)
    size = np.bincount(lab.ravel(), minlength=n + 1)
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[lab[sub == 2]] = True
    edge = np.zeros(n + 1, dtype=bool)
    top, bottom, left, right = window.cut
    for flag, line in ((top, lab[0]), (bottom, lab[-1]), (left, lab[:, 0]), (right, lab[:, -1])):
        if flag:
            edge[line] = True
    keep = (seeded & (size >= min_pixels)) | edge
    keep[0] = False
    lab_in = lab[inner_rel]
    return np.where(keep[lab_in], lab_in, 0).astype(np.int32)


def _crop(lo: int, hi: int, reach: int, align: int, size: int) -> tuple[int, int]:
    """[lo, hi) grown by ``reach``, snapped outwards to multiples of ``align``, clipped."""
    start = max(((lo - reach) // align) * align, 0)
    stop = min(-((-(hi + reach)) // align) * align, size)
    return start, stop


def removal_margin(
    labels: np.ndarray,
    window: Window,
    before: np.ndarray,
    after: np.ndarray,
    before_ok: np.ndarray,
    after_ok: np.ndarray,
    cls: np.ndarray,
    gain: np.ndarray,
    offset: np.ndarray,
    sigma: np.ndarray,
    window_px: int,
) -> np.ndarray:
    """Removal margin of :mod:`pipeline.kernels.detect.pairwise` at the candidate pixels of one
    window.

    Parameters
    ----------
    labels
        (inner h, inner w) local candidate regions (:func:`chunk_regions`).
    window
        Where the window lies.
    before, after
        (B, h, w) float32 views of the window (raw: invalid views are filled here as
        :func:`pipeline.kernels.detect.pairwise.pair_change` fills them).
    before_ok, after_ok
        (h, w) bool validity.
    cls
        (h, w) classes (quiet pixels, class 0, are the background).
    gain, offset, sigma
        (B,) radiometry of the pair.
    window_px
        ``local_window_px`` of the detection config.

    Returns
    -------
    numpy.ndarray
        (inner h, inner w) float32 margin at candidate pixels, NaN elsewhere (and where no
        quiet pixel lies within reach).
    """
    out = np.full(labels.shape, np.nan, dtype=np.float32)
    align, reach = margin_reach_px(window_px)
    (w_r0, _), (w_c0, _) = window.rows, window.cols
    (i_r0, _), (i_c0, _) = window.inner_rows, window.inner_cols
    ts = window.trusted
    ny, nx = window.shape
    n_bands = before.shape[0]
    g, o = gain[:, None, None], offset[:, None, None]
    s = sigma[:, None, None]
    for k, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        r0, r1 = _crop(sl[0].start + i_r0, sl[0].stop + i_r0, reach, align, ny)
        c0, c1 = _crop(sl[1].start + i_c0, sl[1].stop + i_c0, reach, align, nx)
        wr0, wr1, wc0, wc1 = r0 - w_r0, r1 - w_r0, c0 - w_c0, c1 - w_c0
        if wr0 < ts[0].start or wr1 > ts[0].stop or wc0 < ts[1].start or wc1 > ts[1].stop:
            raise DataError(
                f"window rows {window.rows} cols {window.cols} do not hold the removal-margin "
                f"crop rows {(r0, r1)} cols {(c0, c1)}: give window_grid a larger margin"
            )
        crop = (slice(wr0, wr1), slice(wc0, wc1))
        b, a = before[(slice(None), *crop)], after[(slice(None), *crop)]
        after_f = np.nan_to_num(np.where(after_ok[crop][None], a, b))
        before_f = np.nan_to_num(np.where(before_ok[crop][None], b, after_f))
        norm_before = before_f * g + o
        both = surroundings(np.concatenate([norm_before, after_f]), cls[crop] == 0, window_px)
        dist_before = (((norm_before - both[:n_bands]) / s) ** 2).sum(axis=0)
        dist_after = (((after_f - both[n_bands:]) / s) ** 2).sum(axis=0)
        margin = (dist_before - dist_after).astype(np.float32)
        # Pixels of region k + 1 inside the crop, in inner coordinates.
        li = (slice(r0 - i_r0, r1 - i_r0), slice(c0 - i_c0, c1 - i_c0))
        lo_r, lo_c = max(li[0].start, 0), max(li[1].start, 0)
        hi_r, hi_c = min(li[0].stop, labels.shape[0]), min(li[1].stop, labels.shape[1])
        mine = labels[lo_r:hi_r, lo_c:hi_c] == k + 1
        part = margin[
            lo_r - li[0].start : hi_r - li[0].start, lo_c - li[1].start : hi_c - li[1].start
        ]
        out[lo_r:hi_r, lo_c:hi_c][mine] = part[mine]
    return out


def sparse_components(rows: np.ndarray, cols: np.ndarray, width: int) -> np.ndarray:
    """8-connected components of a sparse set of pixels.

    Parameters
    ----------
    rows, cols
        (n,) pixel coordinates (distinct pixels).
    width
        Number of columns of the array (for flat indices).

    Returns
    -------
    numpy.ndarray
        (n,) int64 component of each pixel, numbered 0.. in the order of each component's first
        pixel in raster order (independent of the input order).
    """
    n = int(rows.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    flat = rows.astype(np.int64) * width + cols.astype(np.int64)
    order = np.argsort(flat, kind="stable")
    f, c = flat[order], cols[order].astype(np.int64)
    src, dst = [], []
    for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
        target = f + dr * width + dc
        inside = (c + dc >= 0) & (c + dc < width)
        pos = np.searchsorted(f, target)
        pos_c = np.minimum(pos, n - 1)
        hit = inside & (pos < n) & (f[pos_c] == target)
        src.append(np.flatnonzero(hit))
        dst.append(pos_c[hit])
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(n, n))
    _, lab_sorted = connected_components(graph, directed=False)
    labels = np.empty(n, dtype=np.int64)
    labels[order] = lab_sorted
    return labels
