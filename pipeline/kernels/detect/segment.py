"""Change scores -> signed objects of one date pair, and transients across pairs (pure numpy).

Runs after the scores are computed: a region must be seen whole, across chunk borders. See
:mod:`pipeline.kernels.detect.core` for the method.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import chi2, median_abs_deviation

EIGHT = np.ones((3, 3), dtype=bool)
"""8-connectivity structuring element."""


def hysteresis_regions(
    score: np.ndarray,
    seed_threshold: float,
    grow_threshold: float,
    min_pixels: int,
    min_seeds: int = 1,
) -> tuple[np.ndarray, int]:
    """8-connected regions above ``grow_threshold`` holding ``min_seeds`` seeds and
    ``min_pixels`` pixels.

    Parameters
    ----------
    score
        (y, x) statistic, NaN where not scored.
    seed_threshold, grow_threshold
        Hysteresis thresholds.
    min_pixels
        Smallest region kept.
    min_seeds
        Fewest pixels above ``seed_threshold`` a kept region holds.

    Returns
    -------
    labels : numpy.ndarray
        (y, x) int32 regions numbered 1..n in raster order.
    n : int
        Number of regions.
    """
    with np.errstate(invalid="ignore"):
        seed = score >= seed_threshold
        grow = (score >= min(grow_threshold, seed_threshold)) | seed
    regions, n = ndimage.label(grow, EIGHT)
    if n == 0:
        return regions.astype(np.int32), 0
    keep = np.bincount(regions[seed], minlength=n + 1) >= max(1, min_seeds)
    keep &= np.bincount(regions.ravel(), minlength=n + 1) >= min_pixels
    keep[0] = False
    new_id = np.zeros(n + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_id[regions], int(keep.sum())


def segment_pair(
    score: np.ndarray,
    removed: np.ndarray,
    seed_threshold: float,
    grow_threshold: float,
    min_pixels: int,
    split_fraction: float,
    *,
    weighted: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed objects of one pair: hysteresis, 8-connected regions, sign vote, area filter.

    Parameters
    ----------
    score
        (y, x) score, NaN where not scored.
    removed
        (y, x) removal margin (> 0: removed).
    seed_threshold, grow_threshold
        Hysteresis thresholds on ``score``.
    min_pixels
        Smallest object kept.
    split_fraction
        A region whose minority sign holds more than this share of its pixels is split.
    weighted
        Vote with weights ``score * |removed|`` (pixels with ``removed == 0`` abstain and
        take the region's majority): a strongly changed core outweighs a faint fringe. False:
        one pixel, one vote.

    Returns
    -------
    labels : numpy.ndarray
        (y, x) int32, objects numbered 1..n (removed first, then appeared; raster order within).
    kinds : numpy.ndarray
        (n,) bool, True = removed.
    seed : numpy.ndarray
        (y, x) bool seed pixels.
    """
    with np.errstate(invalid="ignore"):
        seed = score >= seed_threshold
        grow = (score >= min(grow_threshold, seed_threshold)) | seed
    regions, n = ndimage.label(grow, EIGHT)
    labels = np.zeros(score.shape, dtype=np.int32)
    if n == 0:
        return labels, np.zeros(0, dtype=bool), seed
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[regions[seed]] = True
    seeded[0] = False
    regions[~seeded[regions]] = 0
    margin = np.nan_to_num(removed)
    is_removed = margin > 0
    flat = regions.ravel()
    if weighted:
        w = (np.nan_to_num(score) * np.abs(margin)).ravel()
    else:
        w = np.ones(flat.size)
    total = np.bincount(flat, weights=w, minlength=n + 1)
    frac = np.bincount(flat, weights=w * is_removed.ravel(), minlength=n + 1)
    frac = np.where(total > 0, frac / np.maximum(total, 1e-12), 0.5)
    f = frac[regions]
    own = np.where(margin != 0, is_removed, f >= 0.5) if weighted else is_removed
    kind_px = np.where(f >= 1 - split_fraction, True, np.where(f <= split_fraction, False, own))
    kinds: list[bool] = []
    for sign in (True, False):
        comp, m = ndimage.label((regions > 0) & (kind_px == sign), EIGHT)
        if m == 0:
            continue
        size = np.bincount(comp.ravel(), minlength=m + 1)
        keep = np.zeros(m + 1, dtype=bool)
        keep[comp[seed]] = True
        keep &= size >= min_pixels
        keep[0] = False
        new_id = np.zeros(m + 1, dtype=np.int32)
        new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32) + len(kinds)
        labels = np.where(keep[comp], new_id[comp], labels)
        kinds += [sign] * int(keep.sum())
    return labels, np.asarray(kinds, dtype=bool), seed


def transient_objects(
    segments: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], score: np.ndarray
) -> list[np.ndarray]:
    """Flag objects undone at the next view: a change and its reversal (see the module doc).

    Parameters
    ----------
    segments
        Per pair, the ``(labels, kinds, seed)`` of :func:`segment_pair`.
    score
        (pair, y, x) scores (NaN where not scored).

    Returns
    -------
    list of numpy.ndarray
        Per pair, (n,) bool: object ``i + 1`` is transient.
    """
    flags = [np.zeros(len(k), dtype=bool) for _, k, _ in segments]
    scored = np.isfinite(score)
    for p, (labels, kinds, seed) in enumerate(segments):
        for i in range(len(kinds)):
            core = (labels == i + 1) & seed
            n_core = int(core.sum())
            for q in range(p + 1, len(segments)):
                if scored[q][core].sum() * 2 < n_core:
                    continue  # mostly hidden at q: look at the next view
                lab_q, kinds_q, _ = segments[q]
                hit = lab_q[core]
                undo = hit[hit > 0]
                undo = undo[kinds_q[undo - 1] != kinds[i]]
                if undo.size * 2 >= n_core:
                    flags[p][i] = True
                    flags[q][np.unique(undo) - 1] = True
                break
    return flags


def keep_labels(
    labels: np.ndarray, kinds: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop the objects not kept and renumber the rest 1..m in order."""
    if keep.all():
        return labels, kinds
    new_id = np.zeros(len(kinds) + 1, dtype=np.int32)
    new_id[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_id[labels], kinds[keep]


def object_properties(
    labels: np.ndarray,
    kinds: np.ndarray,
    seed: np.ndarray,
    score: np.ndarray,
    before_idx: np.ndarray,
    dates: list[str],
    pair: int,
    n_scored: int,
    n_bands: int,
    site: str,
    *,
    offset: int,
) -> dict[int, dict[str, Any]]:
    """Properties of the objects of one pair, keyed by global label (local + ``offset``).

    ``id``, ``kind``, ``date_before`` (earliest last-valid date over the seed pixels),
    ``date_after``, ``date_before_latest``, ``score`` (mean), ``score_peak``, ``n_seed_pixels``,
    ``confidence`` (see :mod:`pipeline.kernels.detect.core`) and ``pair``.
    """
    n = len(kinds)
    if n == 0:
        return {}
    ids = np.arange(1, n + 1)
    mean = ndimage.mean(score, labels, ids)
    peak = ndimage.maximum(score, labels, ids)
    seed_labels = np.where(seed, labels, 0)
    n_seed = np.bincount(seed_labels.ravel(), minlength=n + 1)[1:]
    first = ndimage.minimum(before_idx, seed_labels, ids)
    last = ndimage.maximum(before_idx, seed_labels, ids)
    tail = chi2.sf(np.asarray(peak, dtype=np.float64), n_bands)
    confidence = np.exp(n_scored * np.log1p(-np.minimum(tail, 1 - 1e-12)))
    date_after = dates[pair + 1]
    out = {}
    for k in range(n):
        label = int(ids[k]) + offset
        out[label] = {
            "id": f"{site}-{date_after.replace('-', '')}-{label}",
            "kind": "removed" if kinds[k] else "appeared",
            "date_before": dates[int(first[k])],
            "date_after": date_after,
            "date_before_latest": dates[int(last[k])],
            "score": round(float(mean[k]), 3),
            "score_peak": round(float(peak[k]), 3),
            "n_seed_pixels": int(n_seed[k]),
            "confidence": round(float(confidence[k]), 4),
            "pair": pair,
        }
    return out


MAX_RING_PX = 40
"""The surroundings of a region are subsampled to at most this many pixels."""


def _segment_distance(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Squared distance of each row of ``points`` (n, B) to the nearest segment (mixture of
    two) between rows of ``ring`` (r, B)."""
    start = ring[:, None, :]
    span = ring[None, :, :] - start
    length = (span**2).sum(-1)
    rel = points[:, None, None, :] - start[None]
    t = np.clip((rel * span[None]).sum(-1) / np.maximum(length[None], 1e-9), 0.0, 1.0)
    return ((rel - t[..., None] * span[None]) ** 2).sum(-1).reshape(len(points), -1).min(1)


def surroundings_margin(
    before: np.ndarray,
    after: np.ndarray,
    changed: np.ndarray,
    quiet: np.ndarray,
    sigma: np.ndarray,
    ring_px: int = 1,
) -> np.ndarray:
    """Removal margin: which view of each changed pixel its surroundings explain better.

    An object occludes the surface; once it is gone, the pixel shows the surfaces around it
    again, or a mixture of two of them (a pixel on a quay edge is part quay, part water). For
    every 8-connected region of ``changed``, the quiet pixels within ``ring_px`` around it are
    its surroundings; each view of each region pixel is scored by its distance (noise units)
    to the nearest mixture of two surrounding pixels. ``margin = d_before - d_after``: > 0
    when the after view is the better explained (something was removed), < 0 when the before
    view is (something appeared). A narrow ring keeps neighbouring objects (the next vehicle
    row) out of the surroundings.

    Parameters
    ----------
    before, after
        (B, y, x) the two views (window means), reflectance.
    changed
        (y, x) bool changed pixels (the grown change regions).
    quiet
        (y, x) bool unchanged, valid pixels (candidates for the surroundings).
    sigma
        (B,) noise sigma per band.
    ring_px
        Width of the surroundings ring, pixels.

    Returns
    -------
    numpy.ndarray
        (y, x) float32 margin, 0 outside the regions or where a region has no surroundings.
    """
    margin = np.zeros(changed.shape, dtype=np.float32)
    scale = (1.0 / np.asarray(sigma, dtype=np.float64))[:, None, None]
    for (y0, y1, x0, x1), reg, ring in _regions_with_rings(changed, quiet, ring_px):
        vb = np.nan_to_num(before[:, y0:y1, x0:x1]) * scale
        va = np.nan_to_num(after[:, y0:y1, x0:x1]) * scale
        rb, ra = vb[:, ring].T, va[:, ring].T
        if len(rb) > MAX_RING_PX:
            pick = np.linspace(0, len(rb) - 1, MAX_RING_PX).astype(int)
            rb, ra = rb[pick], ra[pick]
        d_before = _segment_distance(vb[:, reg].T, rb)
        d_after = _segment_distance(va[:, reg].T, ra)
        sub = margin[y0:y1, x0:x1]
        sub[reg] = (d_before - d_after).astype(np.float32)
    return margin


MIN_ZONE_BACKGROUND_PX = 20
"""Fewest quiet pixels of a zone from which its own background is taken."""

TWO_SURFACE_SEPARATION = 6.0
"""Default of ``detect.sign_two_surface_separation``: a ring holds two surfaces (quay and water,
apron and grass) when its pixels split into two groups, each at least a quarter of it, whose
medians differ by this many times their spread (from the median absolute deviation; noise units,
never less than the noise)."""


def half_sample_mode(values: np.ndarray) -> float:
    """Half-sample mode (Bickel and Fruehwirth 2006): repeatedly keep the shortest half.

    Parameters
    ----------
    values
        1-D sample.

    Returns
    -------
    float
        The mode estimate (NaN for an empty sample).
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if x.size == 0:
        return float("nan")
    while x.size > 3:
        h = (x.size + 1) // 2
        widths = x[h - 1 :] - x[: x.size - h + 1]
        i = int(np.argmin(widths))
        x = x[i : i + h]
    return float(np.median(x))


def _regions_with_rings(
    changed: np.ndarray, quiet: np.ndarray, ring_px: int
) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]]:
    """Each 8-connected region of ``changed``: its window (y0, y1, x0, x1), its mask there,
    and the quiet pixels within ``ring_px`` around it (never in it); regions with no quiet
    pixel around them are skipped."""
    regions, _ = ndimage.label(changed, EIGHT)
    for k, sl in enumerate(ndimage.find_objects(regions), start=1):
        if sl is None:
            continue
        y0, y1 = max(sl[0].start - ring_px, 0), min(sl[0].stop + ring_px, changed.shape[0])
        x0, x1 = max(sl[1].start - ring_px, 0), min(sl[1].stop + ring_px, changed.shape[1])
        reg = regions[y0:y1, x0:x1] == k
        ring = ndimage.binary_dilation(reg, EIGHT, iterations=ring_px) & ~reg
        ring &= quiet[y0:y1, x0:x1]
        if ring.any():
            yield (y0, y1, x0, x1), reg, ring


def _two_surfaces(
    pix: np.ndarray, scale: np.ndarray, separation: float = TWO_SURFACE_SEPARATION
) -> tuple[np.ndarray, np.ndarray | None]:
    """(B,) the ring's one surface (band medians of ``pix``, (B, n)), or two when its pixels
    form two groups ``separation`` spreads apart (``scale`` = 1 / noise sigma)."""
    med = np.median(pix, axis=1)
    if pix.shape[1] < 8:
        return med, None
    z = pix * scale[:, None]
    # 2-means along the first principal direction of the ring (quay and water, apron and grass)
    c = z - z.mean(axis=1, keepdims=True)
    u = np.linalg.svd(c, full_matrices=False)[0][:, 0]
    proj = u @ c
    split = np.median(proj)
    for _ in range(10):
        lo, hi = proj <= split, proj > split
        if lo.sum() < 3 or hi.sum() < 3:
            return med, None
        new = 0.5 * (proj[lo].mean() + proj[hi].mean())
        if new == split:
            break
        split = new
    lo, hi = proj <= split, proj > split
    share = min(lo.mean(), hi.mean())
    # medians and MADs: a quay's ring holds roofs, cranes and hulls whose few bright pixels
    # would inflate a standard deviation and hide the water beside it
    gap = float(np.median(proj[hi]) - np.median(proj[lo]))
    spread = np.sqrt(
        0.5
        * (
            median_abs_deviation(proj[lo], scale="normal") ** 2
            + median_abs_deviation(proj[hi], scale="normal") ** 2
        )
    )
    if share < 0.25 or gap < separation * max(spread, 1.0):
        return med, None
    return np.median(pix[:, lo], axis=1), np.median(pix[:, hi], axis=1)


def _ring_backgrounds(
    view: np.ndarray,
    changed: np.ndarray,
    quiet: np.ndarray,
    ring_px: int,
    scale: np.ndarray,
    separation: float,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(B, y, x) per region of ``changed``: its ring's surface, and its second surface where
    the ring holds two (NaN elsewhere; None when no ring does)."""
    bg = np.full(view.shape, np.nan, dtype=np.float32)
    bg2 = None
    for (y0, y1, x0, x1), reg, ring in _regions_with_rings(changed, quiet, ring_px):
        sub = view[:, y0:y1, x0:x1]
        ring &= np.isfinite(sub).all(axis=0)
        if not ring.any():
            continue
        a, b = _two_surfaces(sub[:, ring].astype(np.float64), scale, separation)
        bg[:, y0:y1, x0:x1][:, reg] = a[:, None]
        if b is not None:
            if bg2 is None:
                bg2 = np.full(view.shape, np.nan, dtype=np.float32)
            bg2[:, y0:y1, x0:x1][:, reg] = b[:, None]
    return bg, bg2


def background_margin(
    before: np.ndarray,
    after: np.ndarray,
    changed: np.ndarray,
    quiet: np.ndarray,
    sigma: np.ndarray,
    window_px: int,
    zones: np.ndarray | None = None,
    ring_px: int = 0,
    separation: float = TWO_SURFACE_SEPARATION,
) -> np.ndarray:
    """Removal margin against the local background: which view of each changed pixel is the
    closer to the median of the quiet pixels around it.

    An object covers a small share of its surroundings (an aircraft on an apron, a vehicle row
    in a park, a ship in a harbour basin), so the median of the quiet pixels within
    ``window_px`` is the empty surface; the view closer to it is the one without the object.
    ``margin = d_before - d_after`` (squared distances in noise units): > 0 removed,
    < 0 appeared. In a zone whose surface carries the objects, the background is the zone's
    most common surface: per band, the half-sample mode of its quiet pixels (a vehicle park
    where most pixels hold part of a vehicle row has a median between vehicle and hardstand;
    its mode is the hardstand between the rows).

    Parameters
    ----------
    before, after
        (B, y, x) the two views, reflectance.
    changed
        (y, x) bool changed pixels.
    quiet
        (y, x) bool unchanged valid pixels (the background candidates).
    sigma
        (B,) noise sigma per band.
    window_px
        Side of the background window, pixels.
    ring_px
        > 0: outside surface zones, the background of a region is the per-band median of the
        quiet pixels in a ring of this width around it (the surface it stands on, even where
        that surface is small among others); where the ring holds two distinct surfaces (a
        ship at a quay: water and concrete, groups ``separation`` spreads apart), each view's
        distance is to the nearer of their medians (the quay pixel beside a departing ship
        brightens back to concrete: removed, not appeared). 0: the local median over
        ``window_px``.
    separation
        How far apart (in spreads) two groups of ring pixels are two surfaces.
    zones
        (y, x) int zone raster (0 = none). A pixel in a zone takes its background from the
        quiet pixels of its own zone (a vehicle park's hardstand, not the fields around it);
        a pixel in no zone, or in a zone without quiet pixels near it, from all quiet pixels.

    Returns
    -------
    numpy.ndarray
        (y, x) float32 margin, 0 outside ``changed`` or where there is no background.
    """
    from pipeline.kernels.detect.neighbourhood import local_background

    scale = (1.0 / np.asarray(sigma, dtype=np.float64))[:, None, None]
    out = np.zeros(changed.shape, dtype=np.float32)
    if not changed.any():
        return out
    zone_ids = [] if zones is None else [int(z) for z in np.unique(zones[changed]) if z > 0]
    dist = []
    for view in (before, after):
        if ring_px > 0:
            bg, bg2 = _ring_backgrounds(view, changed, quiet, ring_px, scale[:, 0, 0], separation)
        else:
            bg = local_background(np.where(quiet[None], view, np.nan).astype(np.float32), window_px)
            bg2 = None
        for z in zone_ids:
            inside = zones == z
            pix = view[:, quiet & inside & np.isfinite(view).all(axis=0)]
            if pix.shape[1] < MIN_ZONE_BACKGROUND_PX:
                continue
            mode = np.asarray([half_sample_mode(b) for b in pix], dtype=np.float32)
            bg = np.where(inside[None], mode[:, None, None], bg)
            if bg2 is not None:
                bg2 = np.where(inside[None], np.nan, bg2)
        d = (((view - bg) * scale) ** 2).sum(axis=0)
        if bg2 is not None:  # the nearer of two surfaces (fmin skips the NaN of one)
            d = np.fmin(d, (((view - bg2) * scale) ** 2).sum(axis=0))
        dist.append(d)
    m = np.nan_to_num(dist[0] - dist[1])
    out[changed] = m[changed]
    return out


WATER_INDEX_SIGMAS = 2.0
"""A view is open water when its water index passes the threshold by this many times its own
noise (the band noise propagated through the index): two standard errors."""


def water_margin(
    before: np.ndarray,
    after: np.ndarray,
    changed: np.ndarray,
    sigma: np.ndarray,
    water_bands: tuple[int, int],
    ndwi: float,
) -> np.ndarray:
    """Removal margin from open water: the view that is water is the empty one.

    Nothing a site watches is water: a ship, an aircraft or a vehicle stands on water or on
    ground, and open water is always a background. Where exactly one view of a changed pixel
    is water (McFeeters' normalised difference water index ``(green - nir) / (green + nir)``
    above ``ndwi`` by :data:`WATER_INDEX_SIGMAS` times its noise; the other view's index below
    ``ndwi``) and that view is also the darker in the near infrared (water absorbs it),
    the pixel is signed by it, with the whole change as its weight: > 0 (removed) when the
    after view is the water, < 0 (appeared) when the before view is. This holds where the
    surroundings cannot tell: a ship in a dock or alongside other ships is as bright as its
    ring, while the water it leaves is not.

    Parameters
    ----------
    before, after
        (B, y, x) the two views, reflectance.
    changed
        (y, x) bool pixels to sign.
    sigma
        (B,) noise sigma per band.
    water_bands
        Indices of the green and near-infrared bands in the first axis.
    ndwi
        Water index above which a view is water.

    Returns
    -------
    numpy.ndarray
        (y, x) float32 margin: ``+-`` the squared change (noise units) where one view is
        water, 0 elsewhere.
    """
    g, n = water_bands
    sg, sn = float(sigma[g]), float(sigma[n])

    def index(view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The view's water index and its noise (first-order propagation of the band noise)."""
        total = view[g] + view[n]
        value = (view[g] - view[n]) / total
        noise = 2.0 * np.hypot(view[n] * sg, view[g] * sn) / total**2
        return value, noise

    with np.errstate(invalid="ignore", divide="ignore"):
        (ib, nb), (ia, na) = index(before), index(after)
        # water: above the threshold by WATER_INDEX_SIGMAS of its own noise (a dark patch of
        # concrete whose index is near the threshold is not water by chance); not water: below
        wb, wa = ib > ndwi + WATER_INDEX_SIGMAS * nb, ia > ndwi + WATER_INDEX_SIGMAS * na
        dry_b, dry_a = ib < ndwi, ia < ndwi
        scale = (1.0 / np.asarray(sigma, dtype=np.float64))[:, None, None]
        change2 = np.nansum(((after - before) * scale) ** 2, axis=0)
    removed = changed & wa & dry_b & (after[n] < before[n])
    appeared = changed & wb & dry_a & (before[n] < after[n])
    out = np.zeros(changed.shape, np.float32)
    out[removed] = change2[removed]
    out[appeared] = -change2[appeared]
    return out
