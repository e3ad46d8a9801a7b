"""Where to co-register: the window of an image pair with the most to register on (pure numpy)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def best_window(
    valid: np.ndarray, size: int, image: np.ndarray | None = None
) -> tuple[slice, slice]:
    """The ``size`` window (or the whole image) of 9 candidates with the most to register on.

    The candidates sit at 0.2, 0.5 and 0.8 of the free range along each axis (the centre wins
    ties). Without ``image`` each is scored by its count of valid pixels; with it, by the
    gradient magnitude of ``image`` summed over its valid pixels: a window of open sea holds
    only noise to register on (a port scene is mostly sea), one over the quays and the town
    holds edges.

    Parameters
    ----------
    valid
        (y, x) bool: pixels usable in both images.
    size
        Window side, pixels (clipped to the image).
    image
        (y, x) reference image whose structure scores the windows; None: valid pixels only.

    Returns
    -------
    tuple of slice
        Rows and columns of the chosen window.
    """
    h, w = min(size, valid.shape[0]), min(size, valid.shape[1])
    if image is None:
        weight = valid.astype(np.int64)
    else:
        fill = np.nanmedian(image[valid]) if valid.any() else 0
        filled = np.where(valid, np.nan_to_num(image), fill)
        weight = np.hypot(ndimage.sobel(filled, 0), ndimage.sobel(filled, 1)) * valid
    best, best_score = (0, 0), -1.0
    for fr in (0.5, 0.2, 0.8):
        for fc in (0.5, 0.2, 0.8):
            r0, c0 = round(fr * (valid.shape[0] - h)), round(fc * (valid.shape[1] - w))
            score = float(weight[r0 : r0 + h, c0 : c0 + w].sum())
            if score > best_score:
                best, best_score = (r0, c0), score
    return slice(best[0], best[0] + h), slice(best[1], best[1] + w)
