"""Co-registration of dates: sub-pixel shift estimation (masked, robust) and its application.

Pure kernels: arrays in, results out; no file I/O, never ``.compute()``.

Method of :func:`estimate_shift` (reference and target: one band of two dates, with masks):

1. **Masks.** Only pixels valid in *both* dates are used (clouds, shadows, no data excluded);
   invalid pixels are filled with a local mean so that filters and splines can run, and every
   filtered value that draws on a filled pixel is masked out again.
2. **Whole-pixel shift.** Gradient magnitude (Sobel of the lightly smoothed band, which survives
   gain, offset and most seasonal change) under a Tukey window, matched by masked normalised
   cross-correlation (Padfield's FFT method, :func:`skimage.registration.phase_cross_correlation`
   with ``reference_mask`` / ``moving_mask``).
3. **Sub-pixel start.** Upsampled-DFT phase correlation of the windowed, mask-filled gradient
   images (``upsample``), kept when it agrees with the masked whole-pixel peak.
4. **Refinement** (:mod:`pipeline.kernels.coregister.refine`): robust Gauss-Newton / Lucas-Kanade
   translation solve on the jointly valid pixels only: both dates band-passed (local mean
   removed over the joint mask), target warped by a cubic spline, a gain/offset term, Huber
   weights then also local-correlation weights (seasonal change, unmasked cloud edges, new
   buildings), coarse (smoothed) then fine, iterated until the update is below 1e-3 px.
5. **Verdict.** ``quality`` = correlation of the high-passed reference and aligned target on the
   jointly valid pixels; ``failed`` when too few pixels are valid in both dates, when the quality
   is below ``min_quality`` (e.g. two unrelated places), when the shift exceeds ``max_shift_px``
   or when the refinement does not converge; else ``ok`` (|shift| <= 0.1 px) or ``shifted``.

Shift convention (``notes/CONTEXT.md``): ``shift_x_px``, ``shift_y_px`` = where the target's
content lies relative to the reference, EAST and NORTH positive: a feature at ``(row, col)`` of
the reference appears at ``(row - shift_y_px, col + shift_x_px)`` of the target.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.signal.windows import tukey
from skimage.registration import phase_cross_correlation

from pipeline.errors import CoregistrationError, DataError
from pipeline.kernels.coregister.apply import apply_shift, apply_shift_mask
from pipeline.kernels.coregister.refine import (
    correlation_quality,
    erode,
    fill_invalid,
    refine_translation,
)

if TYPE_CHECKING:
    from pipeline.config import CoregisterConfig

__all__ = [
    "OK_SHIFT_PX",
    "ShiftEstimate",
    "apply_shift",
    "apply_shift_mask",
    "coregister_cube",
    "coregister_stack",
    "estimate_shift",
    "shift_report",
]

OK_SHIFT_PX = 0.1
"""A date whose shift is at most this (in pixels, each axis combined) needs no correction."""

_GRADIENT_SIGMA_PX = 1.0
"""Smoothing before the Sobel gradient of the whole-pixel stage."""

_TUKEY_ALPHA = 0.25
"""Share of each axis tapered by the Tukey window of the correlation stages."""

_OVERLAP_RATIO = 0.5
"""Least overlap (of the masked pixels) at which a whole-pixel shift is considered."""

_MIN_PIXELS = 400
"""Absolute floor of jointly valid pixels, whatever ``min_valid_fraction`` says."""


@dataclass(frozen=True)
class ShiftEstimate:
    """The shift of one date relative to the reference date, with its verdict."""

    shift_x_px: float
    """Where the target's content lies relative to the reference, pixels, EAST positive."""
    shift_y_px: float
    """Same, NORTH positive (content moved up = negative row displacement)."""
    quality: float
    """Reliability 0..1: correlation of the high-passed reference and aligned target."""
    n_valid: int
    """Pixels valid in both dates that the estimate used."""
    status: str
    """``"ok"`` (|shift| <= 0.1 px), ``"shifted"`` (reliable shift to correct) or ``"failed"``."""
    reason: str | None = None
    """Why the estimate failed (None otherwise)."""

    @property
    def usable(self) -> bool:
        """True when the date can be used (status ``ok`` or ``shifted``)."""
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; non-finite numbers become None."""
        out = asdict(self)
        for key in ("shift_x_px", "shift_y_px", "quality"):
            value = out[key]
            out[key] = float(value) if value is not None and math.isfinite(value) else None
        out["n_valid"] = int(self.n_valid)
        return out


def _failed(
    reason: str, n_valid: int, shift: tuple[float, float] | None = None, quality: float = 0.0
) -> ShiftEstimate:
    sx, sy = shift if shift is not None else (math.nan, math.nan)
    return ShiftEstimate(float(sx), float(sy), float(quality), int(n_valid), "failed", reason)


def _as_band(image: Any, valid: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 band and its validity (given mask AND finite)."""
    band = np.asarray(image, dtype=np.float64)
    if band.ndim != 2:
        raise CoregistrationError(f"{name} must be one 2-D band (Y, X), got shape {band.shape}")
    ok = np.isfinite(band)
    if valid is not None:
        mask = np.asarray(valid, dtype=bool)
        if mask.shape != band.shape:
            raise CoregistrationError(
                f"{name} mask has shape {mask.shape}, band has {band.shape}: pass matching arrays"
            )
        ok &= mask
    return band, ok


def _is_flat(values: np.ndarray) -> bool:
    """True when the values have no variation worth registering (constant up to rounding)."""
    return bool(np.ptp(values) <= 1e-9 * max(1.0, float(np.max(np.abs(values)))))


def _gradient_magnitude(filled: np.ndarray) -> np.ndarray:
    smooth = ndimage.gaussian_filter(filled, _GRADIENT_SIGMA_PX, mode="nearest")
    return np.hypot(
        ndimage.sobel(smooth, 0, mode="nearest"), ndimage.sobel(smooth, 1, mode="nearest")
    )


def _window(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(tukey(shape[0], _TUKEY_ALPHA), tukey(shape[1], _TUKEY_ALPHA))


def _initial_offset(
    ref: np.ndarray, ref_ok: np.ndarray, tgt: np.ndarray, tgt_ok: np.ndarray, upsample: int
) -> tuple[float, float] | None:
    """Array displacement ``d`` (rows, cols) with ``shift(target, d) ~ reference``, or None.

    Whole pixels from masked normalised cross-correlation of gradient images, then the
    upsampled-DFT phase correlation of the mask-filled images when it agrees within 1 px.
    None when the correlation has no finite peak.
    """
    window = _window(ref.shape)
    feat_r = _gradient_magnitude(ref) * window
    feat_t = _gradient_magnitude(tgt) * window
    margin = math.ceil(3 * _GRADIENT_SIGMA_PX) + 1
    mask_r = erode(ref_ok, margin)
    mask_t = erode(tgt_ok, margin)
    if mask_r.sum() < _MIN_PIXELS or mask_t.sum() < _MIN_PIXELS:  # fragmented masks
        mask_r, mask_t = ref_ok, tgt_ok
    with np.errstate(divide="ignore", invalid="ignore"):
        coarse = phase_cross_correlation(
            feat_r, feat_t, reference_mask=mask_r, moving_mask=mask_t, overlap_ratio=_OVERLAP_RATIO
        )[0]
    coarse = np.round(np.asarray(coarse, dtype=np.float64))
    if not np.all(np.isfinite(coarse)):
        return None
    if upsample > 1:
        with warnings.catch_warnings():  # skimage warns on its RMS error, which is not used
            warnings.simplefilter("ignore", UserWarning)
            fine = phase_cross_correlation(
                np.where(mask_r, feat_r, 0.0),
                np.where(mask_t, feat_t, 0.0),
                upsample_factor=int(upsample),
                normalization=None,
            )[0]
        if np.all(np.abs(np.asarray(fine) - coarse) <= 1.0):
            return float(fine[0]), float(fine[1])
    return float(coarse[0]), float(coarse[1])


def estimate_shift(
    reference: Any,
    target: Any,
    reference_valid: Any = None,
    target_valid: Any = None,
    *,
    upsample: int = 100,
    max_shift_px: float = 4.0,
    min_valid_fraction: float = 0.2,
    min_quality: float = 0.3,
    initial: tuple[float, float] | None = None,
) -> ShiftEstimate:
    """Estimate the sub-pixel shift of ``target`` relative to ``reference``.

    Parameters
    ----------
    reference, target : array_like
        One band (Y, X) of the reference date and of the date to register, same shape, float,
        NaN allowed (treated as invalid). A dask array is materialised (one band, small).
    reference_valid, target_valid : array_like of bool, optional
        True where the pixel is usable (no cloud, shadow or no data); default all finite pixels.
    upsample : int, optional
        Upsampling factor of the DFT phase correlation giving the sub-pixel starting point (1
        skips it); the final precision comes from the masked Gauss-Newton refinement.
    max_shift_px : float, optional
        Largest credible shift per axis; a larger one fails.
    min_valid_fraction : float, optional
        Least share of the pixels that must be valid in both dates.
    min_quality : float, optional
        Least post-alignment correlation (``quality``) of a usable estimate.
    initial : tuple of float, optional
        A starting shift ``(shift_x_px, shift_y_px)`` known to within about a pixel (e.g. the
        global shift, when estimating the tie points of :mod:`pipeline.kernels.coregister.local`):
        skips the whole-pixel and DFT stages (steps 2-3) and only refines; the verdict is unchanged.
        Ignored when not finite.

    Returns
    -------
    ShiftEstimate
        ``shift_x_px`` east and ``shift_y_px`` north positive (content displacement of the target);
        ``apply_shift(target, est.shift_x_px, est.shift_y_px)`` aligns the target. Status
        ``"failed"`` carries a reason; its shift is NaN when none could be measured.

    Raises
    ------
    CoregistrationError
        If the arrays are not 2-D or their shapes differ.
    """
    ref, ref_ok = _as_band(reference, reference_valid, "reference")
    tgt, tgt_ok = _as_band(target, target_valid, "target")
    if ref.shape != tgt.shape:
        raise CoregistrationError(
            f"reference {ref.shape} and target {tgt.shape} differ: put both dates on one grid first"
        )
    joint = ref_ok & tgt_ok
    n_joint = int(joint.sum())
    fraction = n_joint / joint.size
    if fraction < min_valid_fraction or n_joint < _MIN_PIXELS:
        return _failed(
            f"only {n_joint} pixels ({fraction:.1%}) valid in both dates (needs "
            f"min_valid_fraction={min_valid_fraction:g} and at least {_MIN_PIXELS})",
            n_joint,
        )
    ref_f = fill_invalid(ref, ref_ok)
    tgt_f = fill_invalid(tgt, tgt_ok)
    if _is_flat(ref[ref_ok]) or _is_flat(tgt[tgt_ok]):
        return _failed("one of the dates is flat (no texture to register)", n_joint)

    if initial is not None and all(math.isfinite(v) for v in initial):
        d0: tuple[float, float] | None = (float(initial[1]), -float(initial[0]))
    else:
        d0 = _initial_offset(ref_f, ref_ok, tgt_f, tgt_ok, upsample)
    if d0 is None:
        return _failed("no correlation peak between the dates", n_joint)
    if max(abs(d0[0]), abs(d0[1])) > max_shift_px + 1.0:
        shift = (-d0[1], d0[0])
        return _failed(
            f"correlation peak at ({shift[0]:+.1f}, {shift[1]:+.1f}) px exceeds "
            f"max_shift_px={max_shift_px:g}",
            n_joint,
            shift,
        )
    result = refine_translation(ref_f, ref_ok, tgt_f, tgt_ok, d0)
    shift = (-result.offset[1], result.offset[0])  # east = -col displacement, north = row one
    quality = correlation_quality(ref_f, tgt_f, result.mask, result.offset)
    n_used = int(result.mask.sum())
    if n_used < _MIN_PIXELS:
        return _failed(
            f"only {n_used} jointly valid pixels away from mask edges (needs {_MIN_PIXELS})",
            n_used,
            shift,
            quality,
        )
    if quality < min_quality:
        return _failed(
            f"quality {quality:.2f} below min_quality={min_quality:g} (unrelated or changed scene)",
            n_used,
            shift,
            quality,
        )
    if not result.converged:
        return _failed(
            f"refinement did not converge in {result.iterations} iterations", n_used, shift, quality
        )
    if max(abs(shift[0]), abs(shift[1])) > max_shift_px:
        return _failed(
            f"shift ({shift[0]:+.2f}, {shift[1]:+.2f}) px exceeds max_shift_px={max_shift_px:g}",
            n_used,
            shift,
            quality,
        )
    status = "ok" if math.hypot(*shift) <= OK_SHIFT_PX else "shifted"
    return ShiftEstimate(float(shift[0]), float(shift[1]), float(quality), n_used, status, None)


def coregister_stack(
    band_stack: Any,
    valid_stack: Any,
    *,
    reference_index: int | None = None,
    **estimate_kwargs: Any,
) -> tuple[int, list[ShiftEstimate]]:
    """Estimate the shift of every date of a stack relative to one reference date.

    Parameters
    ----------
    band_stack : array_like
        One band over time, (T, Y, X) float, NaN allowed. A dask array is materialised here
        (one band of the site window: small); pass numpy to control when.
    valid_stack : array_like of bool
        (T, Y, X), True = usable pixel.
    reference_index : int, optional
        Index of the reference date; default the date with the most valid pixels (first on ties).
    **estimate_kwargs
        Passed to :func:`estimate_shift` (``upsample``, ``max_shift_px``, ...).

    Returns
    -------
    tuple of (int, list of ShiftEstimate)
        The reference index and one estimate per date; the reference's own is zero shift,
        status ``"ok"``, quality 1.

    Raises
    ------
    CoregistrationError
        If the stacks are not (T, Y, X), differ in shape, or ``reference_index`` is out of range.
    """
    bands = np.asarray(band_stack, dtype=np.float64)
    valid = np.asarray(valid_stack, dtype=bool)
    if bands.ndim != 3 or valid.shape != bands.shape:
        raise CoregistrationError(
            f"band_stack {bands.shape} and valid_stack {valid.shape} must both be (time, y, x)"
        )
    valid = valid & np.isfinite(bands)
    counts = valid.reshape(len(valid), -1).sum(axis=1)
    if reference_index is None:
        reference_index = int(np.argmax(counts)) if len(counts) else 0
    if not 0 <= reference_index < len(bands):
        raise CoregistrationError(
            f"reference_index {reference_index} is outside the stack of {len(bands)} dates"
        )
    estimates = []
    for t in range(len(bands)):
        if t == reference_index:
            estimates.append(ShiftEstimate(0.0, 0.0, 1.0, int(counts[t]), "ok", None))
        else:
            estimates.append(
                estimate_shift(
                    bands[reference_index],
                    bands[t],
                    valid[reference_index],
                    valid[t],
                    **estimate_kwargs,
                )
            )
    return reference_index, estimates


def coregister_cube(
    cube: xr.Dataset,
    cfg: CoregisterConfig,
    *,
    reference_index: int | None = None,
    drop_nonfinite: bool = False,
) -> tuple[xr.Dataset, list[ShiftEstimate], int]:
    """Co-register every date of a cube to one reference date and apply the shifts.

    The one "co-register a stack" of the project: the ``coregister`` stage, ``basewatch
    series``, the watch's window (:mod:`pipeline.stages.watch_window`) and the detection sweep
    (:mod:`pipeline.evaluation.sweep`) all call it.

    Parameters
    ----------
    cube
        Bands float32 and ``valid`` bool on (time, y, x) (``scl`` passed through as it is),
        numpy or dask backed; band ``cfg.band`` is read into memory for the estimate.
    cfg
        Co-registration parameters (``band``, ``upsample``, ``max_shift_px``,
        ``min_valid_fraction``, ``min_quality``).
    reference_index
        Index of the reference date; default the date with the most valid pixels (first on
        ties). The watch passes the site's reference date when it is in its window.
    drop_nonfinite
        Also mark invalid every pixel where a shifted band is not finite (NaN from the band
        itself, not from ``valid``), so that ``valid`` implies finite bands; the sweep's scenes
        need it. Default False: ``valid`` is the shifted mask only.

    Returns
    -------
    tuple
        The aligned cube (dates whose estimate failed dropped; every band NaN where the shifted
        ``valid`` is False; lazy where the cube was), one :class:`ShiftEstimate` per date of
        ``cube`` (failed ones included) and the index of the reference date.
        :func:`shift_report` turns the last two into the JSON record of the dates.

    Raises
    ------
    DataError
        When ``cfg.band`` or ``valid`` is not in the cube.
    CoregistrationError
        When ``reference_index`` is outside the stack.
    """
    for name in (cfg.band, "valid"):
        if name not in cube:
            have = ", ".join(str(v) for v in cube.data_vars)
            raise DataError(
                f"coregister.band {cfg.band!r} or 'valid' is not in the cube (it has {have}): "
                "pick a loaded band"
            )
    band = cube[cfg.band].astype("float32").values
    valid = cube["valid"].values
    ref, estimates = coregister_stack(
        band,
        valid,
        reference_index=reference_index,
        upsample=cfg.upsample,
        max_shift_px=cfg.max_shift_px,
        min_valid_fraction=cfg.min_valid_fraction,
        min_quality=cfg.min_quality,
    )
    keep = [i for i, e in enumerate(estimates) if e.usable]
    return _apply_shifts(cube, estimates, keep, drop_nonfinite), estimates, ref


def shift_report(
    times: Any, estimates: list[ShiftEstimate], reference_index: int
) -> dict[str, Any]:
    """The dates of a :func:`coregister_cube` run as a JSON-ready record.

    Parameters
    ----------
    times
        The ``time`` values of the cube given to :func:`coregister_cube` (datetime64).
    estimates, reference_index
        What :func:`coregister_cube` returned.

    Returns
    -------
    dict
        ``{"reference_date": "YYYY-MM-DD", "dates": [{"date", **ShiftEstimate.to_dict()}]}``,
        one record per date, failed ones included.
    """
    days = [str(np.datetime_as_string(t, unit="D")) for t in np.asarray(times)]
    return {
        "reference_date": days[reference_index],
        "dates": [{"date": d, **e.to_dict()} for d, e in zip(days, estimates, strict=True)],
    }


def _apply_shifts(
    cube: xr.Dataset, estimates: list[ShiftEstimate], keep: list[int], drop_nonfinite: bool
) -> xr.Dataset:
    """The dates ``keep`` of ``cube``, each shifted by its estimate; bands NaN where not valid
    (and, with ``drop_nonfinite``, not valid where a shifted band is not finite)."""
    sub = cube.isel(time=keep)
    out = {}
    bands = [v for v in sub.data_vars if v not in ("valid", "scl")]
    for name in bands:
        slices = [
            apply_shift(
                sub[name].isel(time=j).data, estimates[i].shift_x_px, estimates[i].shift_y_px
            )
            for j, i in enumerate(keep)
        ]
        out[name] = _stack_like(sub[name], slices)
    valid = [
        apply_shift_mask(
            sub["valid"].isel(time=j).data, estimates[i].shift_x_px, estimates[i].shift_y_px
        )
        for j, i in enumerate(keep)
    ]
    out["valid"] = _stack_like(sub["valid"], valid)
    if drop_nonfinite:
        for name in bands:
            out["valid"] = out["valid"] & np.isfinite(out[name])
    if "scl" in sub:
        out["scl"] = sub["scl"]
    ds = xr.Dataset(out, attrs=dict(cube.attrs))
    for name in bands:
        ds[name] = ds[name].where(ds["valid"])
    return ds


def _stack_like(template: xr.DataArray, slices: list) -> xr.DataArray:
    import dask.array as da

    if any(isinstance(s, da.Array) for s in slices):
        data = da.stack([da.asarray(s) for s in slices])
    else:
        data = np.stack(slices)
    return xr.DataArray(data, dims=template.dims, coords=template.coords, attrs=template.attrs)
