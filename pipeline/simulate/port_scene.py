"""A real port scene and its annotated ships, read from a sen2ships export (real background).

The exports map reflectance 0..1 linearly onto 0..65535, so reflectance = ``DN / 65535``
(:data:`DN_FULL_SCALE`, the same factor for every band). Each ship annotation is an uncompressed
COCO RLE in column-major order (:func:`decode_rle`); ships are numbered 1..N in the label raster
in annotation order (:func:`read_port`). :mod:`pipeline.simulate.ports` builds the dates of a
benchmark case from one such scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

BAND_FILES: dict[str, str] = {
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "nir": "B08",
    "swir16": "B11",
}
"""Vocabulary band -> file stem of a sen2ships port folder."""

DN_FULL_SCALE = 65535.0
"""Reflectance = DN / this (the exports stretch reflectance 0..1 to the uint16 range)."""


def decode_rle(counts: list[int] | str, size: tuple[int, int] | list[int] | str) -> np.ndarray:
    """Decode an uncompressed COCO run-length encoding (column-major) to a bool mask.

    Parameters
    ----------
    counts
        Run lengths, alternately background and object, starting with background (a list, or
        its JSON text ``"[400589, 11, ...]"`` as the sen2ships files store it).
    size
        ``(height, width)`` (or its JSON text).

    Returns
    -------
    numpy.ndarray
        (height, width) bool mask.

    Raises
    ------
    ValueError
        When the runs do not add up to ``height x width``.
    """
    runs = np.asarray(json.loads(counts) if isinstance(counts, str) else counts, dtype=np.int64)
    h, w = (int(v) for v in (json.loads(size) if isinstance(size, str) else size))
    if runs.sum() != h * w:
        raise ValueError(f"RLE runs add up to {int(runs.sum())} pixels, not {h} x {w}")
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy()


@dataclass(frozen=True)
class PortScene:
    """One real port date: reflectance bands, ship labels and the grid."""

    name: str
    """Port (folder name)."""
    bands: np.ndarray
    """(B, y, x) float32 reflectance, bands in :data:`BAND_FILES` order."""
    band_names: tuple[str, ...]
    """Vocabulary names of the first axis."""
    ships: np.ndarray
    """(y, x) int32: 0 = no ship, i = ship i (1-based, annotation order; overlaps go to the
    later annotation)."""
    ship_masks: list[np.ndarray]
    """Each ship's own (y, x) bool mask (before any overlap is resolved)."""
    transform: Affine
    """Grid transform (pixel corners)."""
    crs: str
    """Grid CRS (``EPSG:3857``)."""
    pixel_size_m: float
    """Ground size of a pixel (m): the Web Mercator step times cos(latitude)."""

    @property
    def n_ships(self) -> int:
        """Number of annotated ships."""
        return len(self.ship_masks)


def _ground_pixel_m(transform: Affine, shape: tuple[int, int], crs: str) -> float:
    from pyproj import Transformer

    x, y = transform @ (shape[1] / 2, shape[0] / 2)
    _, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(x, y)
    step = float(np.sqrt(abs(transform.a * transform.e)))
    return step * float(np.cos(np.radians(lat)))


def read_port(folder: str | Path) -> PortScene:
    """Read a sen2ships port folder: bands as reflectance and the ship masks.

    Parameters
    ----------
    folder
        ``.../sen2ships/<port>`` with ``B02.tif`` ... ``B11.tif`` and ``<port>_coco.json``.

    Returns
    -------
    PortScene
        The scene.

    Raises
    ------
    FileNotFoundError
        When a band or the annotation file is missing.
    ValueError
        When a mask does not match the bands' shape.
    """
    folder = Path(folder)
    arrays = []
    for stem in BAND_FILES.values():
        with rasterio.open(folder / f"{stem}.tif") as src:
            arrays.append(src.read(1).astype(np.float32) / np.float32(DN_FULL_SCALE))
            transform, crs = src.transform, src.crs.to_string()
    bands = np.stack(arrays)
    coco = json.loads((folder / f"{folder.name}_coco.json").read_text())
    masks = []
    for ann in coco["annotations"]:
        seg = ann["segmentation"]
        m = decode_rle(seg["counts"], seg["size"])
        if m.shape != bands.shape[1:]:
            raise ValueError(f"{folder}: a ship mask is {m.shape}, the bands {bands.shape[1:]}")
        if m.any():
            masks.append(m)
    ships = np.zeros(bands.shape[1:], np.int32)
    for i, m in enumerate(masks, start=1):
        ships[m] = i
    return PortScene(
        name=folder.name,
        bands=bands,
        band_names=tuple(BAND_FILES),
        ships=ships,
        ship_masks=masks,
        transform=transform,
        crs=crs,
        pixel_size_m=_ground_pixel_m(transform, bands.shape[1:], crs),
    )


def crop_scene(scene: PortScene, max_px: int, margin_px: int = 48) -> tuple[PortScene, dict]:
    """The scene cut to its ships: their bounding box plus ``margin_px``, and when that holds
    more than ``max_px`` pixels, the square-ish window of that many pixels holding the most ship
    pixels (ships cut by its edge are dropped whole; the others keep their order).

    Returns
    -------
    tuple
        The cropped scene and the window (``row0``, ``col0``, ``rows``, ``cols``, ``n_ships``,
        ``n_ships_dropped``).
    """
    ny, nx = scene.ships.shape
    rows, cols = np.nonzero(scene.ships > 0)
    if rows.size == 0:
        r0, r1, c0, c1 = 0, ny, 0, nx
    else:
        r0, r1 = max(rows.min() - margin_px, 0), min(rows.max() + margin_px + 1, ny)
        c0, c1 = max(cols.min() - margin_px, 0), min(cols.max() + margin_px + 1, nx)
    h, w = r1 - r0, c1 - c0
    if h * w > max_px:
        side = int(np.sqrt(max_px))
        wh, ww = min(h, max(side, max_px // w)), min(w, max(side, max_px // h))
        ship_px = (scene.ships[r0:r1, c0:c1] > 0).astype(np.int64)
        csum = np.pad(ship_px.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        best, best_n = (0, 0), -1
        for i in range(0, h - wh + 1, 8):
            for j in range(0, w - ww + 1, 8):
                n = csum[i + wh, j + ww] - csum[i, j + ww] - csum[i + wh, j] + csum[i, j]
                if n > best_n:
                    best, best_n = (i, j), n
        r0, c0 = r0 + best[0], c0 + best[1]
        r1, c1 = r0 + wh, c0 + ww
    window = (slice(r0, r1), slice(c0, c1))
    masks = []
    for m in scene.ship_masks:
        inside = m[window]
        if inside.any() and inside.sum() == m.sum():
            masks.append(inside.copy())
    ships = np.zeros((r1 - r0, c1 - c0), np.int32)
    for i, m in enumerate(masks, start=1):
        ships[m] = i
    cropped = PortScene(
        name=scene.name,
        bands=scene.bands[:, r0:r1, c0:c1].copy(),
        band_names=scene.band_names,
        ships=ships,
        ship_masks=masks,
        transform=scene.transform * Affine.translation(c0, r0),
        crs=scene.crs,
        pixel_size_m=scene.pixel_size_m,
    )
    info = {
        "row0": int(r0),
        "col0": int(c0),
        "rows": int(r1 - r0),
        "cols": int(c1 - c0),
        "n_ships": len(masks),
        "n_ships_dropped": scene.n_ships - len(masks),
    }
    return cropped, info


def ship_lengths_m(scene: PortScene) -> np.ndarray:
    """Length (m) of each ship: the major axis of its mask (second moments, as
    :func:`pipeline.kernels.detect.objects.shape_measures` measures objects), at the scene's ground
    pixel size.

    Returns
    -------
    numpy.ndarray
        (N,) float lengths, ship i at index i - 1.
    """
    out = np.zeros(scene.n_ships)
    for i, m in enumerate(scene.ship_masks):
        rows, cols = np.nonzero(m)
        if rows.size < 2:
            out[i] = scene.pixel_size_m
            continue
        cov = np.cov(np.vstack([cols, rows]).astype(float))
        major = float(np.sqrt(max(np.linalg.eigvalsh(cov)[-1], 0.0)))
        # a filled L x W rectangle has variance L^2 / 12 along its length; a pixel adds 1
        out[i] = max(np.sqrt(12.0 * major**2 + 1.0), 1.0) * scene.pixel_size_m
    return out
