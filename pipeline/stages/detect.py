"""Detect objects in an aligned cube: the detector's kernels, with the one compute between them.

The kernels of :mod:`pipeline.kernels.detect` return lazy results and never compute; this is
where the cube's lazy part is computed, once, before the objects are labelled on numpy (a region
must be seen whole across chunk borders):

- ``multidate`` (the default): the band stack and its validity
  (:func:`pipeline.kernels.detect.pairwise.stack_inputs`), then
  :func:`pipeline.kernels.detect.core.multidate_objects`.
- ``pairwise``: every pair's score, removal margin, before-date index and fit summaries
  (:func:`pipeline.kernels.detect.pairwise.pair_scores`), then
  :func:`pipeline.kernels.detect.pairwise.pairwise_objects`; the result keeps the lazy score.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import numpy as np
import xarray as xr

from pipeline.config import Config, DetectConfig
from pipeline.io.calibration import active_model
from pipeline.kernels.detect import calibration
from pipeline.kernels.detect.core import detection_occupancy, multidate_objects
from pipeline.kernels.detect.pairwise import (
    DEFAULT_BANDS,
    DetectResult,
    check_inputs,
    pair_scores,
    pairwise_objects,
    stack_inputs,
)
from pipeline.sites import Site

__all__ = ["DEFAULT_BANDS", "DetectResult", "detect_cube"]


def detect_cube(
    cube: xr.Dataset,
    zone_raster: np.ndarray,
    zone_names: Sequence[str],
    zone_kinds: Sequence[str],
    cfg: DetectConfig,
    bands: Sequence[str] = DEFAULT_BANDS,
    *,
    calibration_model: calibration.Model | None,
) -> DetectResult:
    """Detect removed and appeared objects in an aligned cube (:mod:`pipeline.kernels.detect.core`).

    Parameters
    ----------
    cube
        Aligned cube: bands float32 and ``valid`` bool on (time, y, x), ``crs`` attribute, x/y
        pixel-centre coordinates; numpy or dask backed.
    zone_raster
        (y, x) int zones on the cube's grid (0 = none, i + 1 = ``zone_names[i]``).
    zone_names, zone_kinds
        Name and kind of each zone.
    cfg
        Detection parameters (``cfg.method`` picks the method).
    bands
        Bands compared.
    calibration_model
        The confidence model of the multi-date method (the stages pass
        :func:`pipeline.io.calibration.active_model`); None: confidence stays noise-only and
        nothing is dropped by ``cfg.min_confidence``.

    Returns
    -------
    DetectResult
        Features, per-pair summaries, the (pair, y, x) score and labels (pair ``p`` = the
        change first seen at date ``p + 1``) and the zone occupancy per date. The score is lazy
        for a dask cube with the pairwise method (writing it recomputes it), numpy otherwise.

    Raises
    ------
    DataError
        When bands, ``valid``, the ``crs`` attribute or a matching zone raster are missing.

    Notes
    -----
    One ``dask.compute`` for dask input: the multi-date method loads the band stack into
    memory (a site is small; whole tiles go through :mod:`pipeline.stages.tile`).
    """
    bands, _, checked_zones = check_inputs(cube, zone_raster, bands)
    if cfg.method == "pairwise":
        lazy = pair_scores(cube, cfg, bands)
        (scores,) = dask.compute(lazy)
        result = pairwise_objects(
            cube, scores, checked_zones, zone_names, zone_kinds, cfg, bands, score=lazy.score
        )
    else:
        stack, valid = dask.compute(*stack_inputs(cube, bands))
        result = multidate_objects(
            cube,
            stack,
            valid,
            checked_zones,
            zone_names,
            zone_kinds,
            cfg,
            bands,
            calibration_model=calibration_model,
        )
    result.occupancy = detection_occupancy(result, zone_raster, zone_names, cube)
    return result


def detect_site(cube: xr.Dataset, site: Site, cfg: Config) -> DetectResult:
    """:func:`detect_cube` on a site's aligned cube: its zones on the load grid, the configured
    bands the cube holds, and the active calibration model
    (:func:`pipeline.io.calibration.active_model`)."""
    return detect_cube(
        cube,
        site.zone_raster(site.geobox(cfg.load.resolution_m)),
        [z.name for z in site.zones],
        [z.kind for z in site.zones],
        cfg.detect,
        bands=[b for b in cfg.load.bands if b in cube],
        calibration_model=active_model(),
    )
