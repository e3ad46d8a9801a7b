"""The detector's parameters: the ``detect:`` section of the config (:mod:`pipeline.config`).

Every key is documented by its ``description``; unknown keys are errors.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

DetectMethod = Literal["multidate", "pairwise"]
"""The detectors: ``detect.method``, and the methods of ``basewatch tile``."""

DETECT_METHODS: tuple[DetectMethod, ...] = get_args(DetectMethod)


class DetectConfig(BaseModel):
    """The change core (the ``detect:`` section of the config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    false_alarm_rate: float = Field(
        1e-5,
        gt=0,
        lt=1,
        description="Per-pixel probability that an unchanged pixel passes the seed threshold, "
        "under the noise model estimated from the data itself.",
    )
    grow_false_alarm_rate: float = Field(
        1e-2,
        gt=0,
        lt=1,
        description="Per-pixel false-alarm rate of the lower (hysteresis) threshold that grows "
        "seeds into whole objects.",
    )
    min_area_m2: float = Field(
        300.0, ge=0, description="Drop change regions smaller than this area."
    )
    registration_noise_px: float = Field(
        0.2,
        ge=0,
        description="Residual misregistration left after co-registration (px, 1 sigma per "
        "axis): adds (this x local gradient)^2 to each band's noise variance where both dates "
        "show an edge, so static edges are not change. 0 turns it off.",
    )
    resampling_blur_px2: float = Field(
        0.125,
        ge=0,
        description="Blur difference left by resampling each date by its own sub-pixel shift "
        "(px^2; bilinear kernels differ by up to 0.25 px^2 of variance, half of it multiplies "
        "the Laplacian): adds (this x local Laplacian)^2 to each band's noise variance where "
        "both dates show the fine structure. 0 turns it off.",
    )
    smooth_sigma_px: float = Field(
        0.0,
        ge=0,
        description="Gaussian smoothing (px) of the standardised differences before scoring; "
        "the null is rescaled for it. 0 = none (single pixels keep their full weight).",
    )
    decorrelate_bands: bool = Field(
        True,
        description="Score with the robust band correlation of the noise (Mahalanobis) "
        "instead of a plain sum of squared standardised differences.",
    )
    local_window_px: int = Field(
        24,
        ge=3,
        description="Side (px) of the local window (a median of block medians) for the local "
        "change level and noise (change wider than it is not an object) and for the background "
        "that signs a change (removed when the after view is closer to its surroundings). "
        "Objects should cover well under half of it.",
    )
    haze_z: float = Field(
        3.0,
        gt=0,
        description="Thin-cloud guard: a pixel whose normalised blue rises by more than this "
        "many noise sigmas near a transient cloud (haze_distance_px) is not scored that date.",
    )
    haze_distance_px: int = Field(
        10,
        ge=0,
        description="Reach (px) of the thin-cloud guard around pixels invalid at that date "
        "but valid on most dates. 0 turns the guard off.",
    )
    sign_split_fraction: float = Field(
        0.25,
        ge=0,
        le=0.5,
        description="A change region whose minority sign (removed/appeared) holds more than "
        "this share of its pixels is split into signed parts; else it takes the majority sign.",
    )
    drop_transients: bool = Field(
        False,
        description="Drop a change undone at the next clear view (appeared then removed, or "
        "the reverse, at the same pixels): mostly clouds and shadows the mask missed, but also "
        "an object present on a single date. Off: such objects are reported with "
        "transient=true.",
    )
    max_sample_px: int = Field(
        40_000,
        ge=1000,
        description="Pixels sampled (regular grid) per date pair for the gain/offset fit, the "
        "noise sigma and the null calibration.",
    )
    memory_budget_mb: float = Field(
        3072.0,
        gt=0,
        description="Memory (MB) the multi-date detector may hold. Over it (estimated from the "
        "cube's dates, bands and pixels), the detect stage runs window by window with the same "
        "detections (pipeline.kernels.detect.windows). The whole-tile stage (basewatch tile) "
        "sizes its multi-date chunks so that one per worker thread fits it "
        "(pipeline.stages.tile.series_chunk_px). The default suits a 2-core, 4 GiB worker "
        "(the cube, the outputs and the interpreter take the rest).",
    )
    # --- the multi-date method (pipeline.kernels.detect.core, pipeline.kernels.detect.multidate,
    # pipeline.kernels.detect.clouds) ---
    method: DetectMethod = Field(
        "multidate",
        description="multidate: every break between two valid dates is tested with windows of "
        "valid dates before and after it (clouds and one-date excursions handled over the "
        "whole series); pairwise: each date against the last clear view before it (the core "
        "of `basewatch pair`; the keys above apply).",
    )
    window_dates: int = Field(
        3,
        ge=1,
        le=12,
        description="Largest number of valid dates averaged on each side of a break. More "
        "dates: more power and more robustness to one bad date, but a short-lived object (an "
        "aircraft for two passes) fills less of a window.",
    )
    series_false_alarm_rate: float = Field(
        1.0e-9,
        gt=0,
        lt=1,
        description="Per-pixel, per-break probability under the chi-square noise model that an "
        "unchanged pixel passes the seed threshold of the multi-date test. Far below one over "
        "the number of tests (about 2e6 per site) because the real noise has heavier tails "
        "than the model (texture, resampling, tile fusion); grown by grow_false_alarm_rate.",
    )
    max_changes: int = Field(
        4, ge=1, description="Most changes per pixel bounding the windows of the others."
    )
    drift: bool = Field(
        True,
        description="Remove each pixel's slow drift (median consecutive slope, smoothed over "
        "drift_window_px) before the step test: a field greening is a slope, not a step.",
    )
    drift_window_px: int = Field(
        6, ge=3, description="Side (px) of the window smoothing the drift rates."
    )
    drift_residual_sd: float = Field(
        0.7,
        ge=0,
        description="Drift left in a pixel after the smoothed drift is taken out (noise sigmas "
        "per 30 days: fields are not uniform, growth is not linear); adds (dt x this)^2 to the "
        "variance of a step whose windows are dt apart.",
    )
    series_noise_trim: float = Field(
        0.15,
        ge=0,
        lt=0.5,
        description="Share of each pixel's largest consecutive differences left out when "
        "estimating its own noise (the real changes); the noise of an observation is at least "
        "that pixel noise.",
    )
    structure_window_px: int = Field(
        31,
        ge=3,
        description="Side (px) of the window over which each date's texture noise (residual "
        "misregistration, resampling, reprojection of a second tile) is fitted against the "
        "image gradient.",
    )
    excursion_mask: bool = Field(
        True,
        description="Mask one-date departures whose spectral shape is cloud, haze or shadow "
        "(the SCL missed them), then retest.",
    )
    shadow_model: bool = Field(
        True, description="Allow the shadow form (proportional darkening) in the cloud check."
    )
    haze_model: bool = Field(
        True, description="Allow a thin-haze term (lambda^-2, blue most) in the cloud check."
    )
    cloud_brightness: tuple[float, float] = Field(
        (0.5, 1.6),
        description="Range of a cloud's brightness relative to a typical cloud top (0.55 in "
        "the visible): a departure mixing towards something darker is not a cloud.",
    )
    atmosphere_max_unexplained: float = Field(
        0.035,
        gt=0,
        lt=1,
        description="A departure whose best cloud/haze/shadow fit leaves at most this share of "
        "its energy (noise-weighted, over the region) is atmospheric; clouds leave under 2 %, "
        "a ship on water or a vehicle on soil several times more.",
    )
    atmosphere_context_m: float | None = Field(
        5000.0,
        gt=0,
        description="A one-date departure is cloud, haze or shadow only within this distance "
        "(m) of a pixel masked on the same date (SCL cloud, shadow or no data, or a departure "
        "already found atmospheric): the SCL misses the edges, puffs and shadows of the clouds "
        "it flags, not whole cloud systems, and a shadow falls a few km at most from its "
        "cloud. On a clear date a departure is an object (a ship leaving the sea darkens every "
        "band like a shadow). Applies to cubes with an SCL (without one the departures are the "
        "only cloud test). null: anywhere.",
    )
    excursion_false_alarm_rate: float = Field(
        1.0e-4,
        gt=0,
        lt=1,
        description="Seed rate (chi-square) of candidate one-date departures tested for cloud.",
    )
    excursion_dilation_px: int = Field(
        2, ge=0, description="Margin (px) masked around a departure found atmospheric."
    )
    excursion_passes: int = Field(
        2, ge=1, le=5, description="Masking passes (a cloud spoils its neighbours' test)."
    )
    one_date_objects: bool = Field(
        True,
        description="Report strong object-like one-date departures (a ship anchored for one "
        "pass) as an appearance and a removal (transient=true).",
    )
    one_date_false_alarm_rate: float = Field(
        1.0e-4,
        gt=0,
        lt=1,
        description="Seed rate (chi-square) of one-date objects (a date against the mean of "
        "its neighbours, a two-date comparison): an object needs min_seed_pixels such pixels, "
        "no atmospheric fit and no masked pixel within one_date_cloud_distance_px; its "
        "calibrated confidence weighs the rest.",
    )
    end_check: bool = Field(
        True,
        description="Drop a change seen on one date only at either end of the series (or "
        "between clouds) when its spectral shape is atmospheric.",
    )
    region_mean_test: bool = Field(
        False,
        description="Multi-date method: keep a change region only when its mean statistic "
        "passes the seed threshold (every pixel of a changed object changed; a noise spike "
        "grown into its fringe by the hysteresis does not).",
    )
    min_seed_pixels: int = Field(
        3,
        ge=1,
        description="Multi-date method: fewest pixels of a change region above the seed "
        "threshold. Noise and texture pass it in isolated pixels; an object of 30 m or more, "
        "spread by the PSF over 10 m pixels, in several.",
    )
    one_date_cloud_distance_px: int = Field(
        10,
        ge=0,
        description="A one-date object within this distance (px) of a pixel masked on its date "
        "(SCL, or an excursion found atmospheric) is dropped: the unflagged edge of a cloud or "
        "its shadow, not an object. 0 disables.",
    )
    sign_method: Literal["surround", "background", "ring"] = Field(
        "surround",
        description="Multi-date method: how a change is signed (removed: the after view is the "
        "empty surface, the one closer to the surface around the object). surround: the band "
        "medians of the quiet pixels in a ring of sign_ring_px around the region; background: "
        "the median of the quiet pixels within sign_window_px; with both, inside a surface zone "
        "the zone's most common surface (its half-sample mode). ring: which view the mixtures "
        "of two quiet pixels just around the region explain better.",
    )
    sign_surface_zone_kinds: tuple[str, ...] = Field(
        ("apron", "runway", "taxiway", "parking", "hardstand"),
        description="Zone kinds whose own surface carries the objects (an aircraft stands on "
        "the apron): their background comes from their own quiet pixels. Elsewhere (a ship "
        "moors beside a pier, on water) it comes from all quiet pixels around.",
    )
    sign_window_px: int = Field(
        24, ge=6, description="Side (px) of the background window of sign_method background."
    )
    sign_ring_px: int = Field(
        3,
        ge=1,
        le=8,
        description="Width (px) of the ring of surroundings that signs a change (sign_method "
        "surround or ring).",
    )
    sign_two_surface_separation: float = Field(
        6.0,
        gt=0,
        description="sign_method surround: the ring holds two surfaces (a quay and the water) "
        "when its pixels split into two groups, each a quarter of it or more, whose means lie "
        "this many times their spread apart (noise units); each view is then compared with "
        "the nearer surface.",
    )
    sign_water_ndwi: float | None = Field(
        0.0,
        ge=-1,
        le=1,
        description="A changed pixel one of whose views is open water (normalised difference "
        "water index (green - nir) / (green + nir) above this, McFeeters' usual 0) and the other "
        "not, with less near infrared in the water view, is signed by it: the water view is the "
        "empty one (nothing watched is water). null disables.",
    )
    series_sign_split_fraction: float = Field(
        0.2,
        ge=0,
        le=0.5,
        description="Multi-date method: a change region whose minority sign holds more than "
        "this share of the (score x margin)-weighted vote is split into signed parts.",
    )
    min_confidence: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Multi-date method: report a detection only when its calibrated confidence "
        "(the fitted probability that a detection like it is a real change, "
        "pipeline/kernels/detect/calibration.py) is at least this. 0.5 reports what is more "
        "likely real than not; 0 reports every candidate. Without a shipped model nothing is "
        "dropped.",
    )
