"""A generated stack of any size, read window by window, for benchmarks and tests (simulated).

:class:`SyntheticStack` is a :class:`pipeline.stages.tile.StackReader` whose pixels are a pure
function of (date, band, row, column), so any window of any date can be generated on its own,
in memory proportional to the window: a full 10980 x 10980 tile over 24 dates (46 GB of
float32) never exists at once. Each date is

``gain[t, b] * (scene[b] + objects present at t) + offset[t, b] + noise_sigma * noise[t, b]``

with a land-cover scene (patches at three scales, correlated bands), planted rectangular objects
(one per ``object_spacing_px`` cell, each *removed* or *appeared* at one date), a per-date
gain/offset, Gaussian noise and square clouds (invalid, bright). Scene and noise repeat with a
period of :data:`PERIOD_PX` (a prime, so no chunk grid lines up with it); the noise of each
date and band is the noise field at its own random offset, so dates are independent.

Nothing on the detection path imports this module: only tests and benchmarks do, and they
compare detections with :meth:`SyntheticStack.events`.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from scipy import ndimage

PERIOD_PX = 1531
"""Period (px) of the scene and noise fields."""

_BUILD = threading.Lock()

ORIGIN = (600_000.0, 4_000_000.0)
"""Upper-left corner (x, y) of the grid in EPSG:32636 (about 36.1 N, 34.9 E)."""


@dataclass(frozen=True)
class SyntheticStack:
    """A generated (date, band, y, x) float32 stack with validity, read by windows."""

    shape: tuple[int, int]
    """(rows, cols) of the grid."""
    n_dates: int
    """Number of dates (at least 2)."""
    n_bands: int = 4
    """Number of bands."""
    seed: int = 0
    """Seed of everything random."""
    noise_sigma: float = 0.01
    """Sensor noise, reflectance."""
    object_spacing_px: int = 256
    """One planted object per cell of this side."""
    cloud_fraction: float = 0.03
    """Share of each date (after the first) under cloud, on average."""
    crs: str = "EPSG:32636"
    """CRS of the grid."""
    pixel_m: float = 10.0
    """Pixel size, metres."""
    period_px: int = PERIOD_PX
    """Period of the scene and noise fields (smaller: faster to build, for small tests)."""
    _cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = {}  # fields are rebuilt on first use in each process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __dask_tokenize__(self) -> tuple:
        return (type(self).__name__, *(getattr(self, f) for f in _FIELDS))

    # ------------------------------------------------------------------ grid and dates
    @property
    def dates(self) -> list[str]:
        """One date every 5 days from 2024-11-02."""
        d0 = dt.date(2024, 11, 2)
        return [(d0 + dt.timedelta(days=5 * t)).isoformat() for t in range(self.n_dates)]

    @property
    def transform(self) -> Affine:
        """Affine transform of the grid (north up)."""
        return Affine(self.pixel_m, 0.0, ORIGIN[0], 0.0, -self.pixel_m, ORIGIN[1])

    # ------------------------------------------------------------------ generated parts
    def _rng(self, *key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def _fields(self) -> tuple[np.ndarray, np.ndarray]:
        """(B, P, P) scene and unit noise fields (built once per process)."""
        with _BUILD:
            if "scene" not in self._cache:
                self._build_fields()
        return self._cache["scene"], self._cache["noise"]

    def _build_fields(self) -> None:
        """Scene: patches at three scales mixing three spectra; noise: unit Gaussian."""
        p, nb = self.period_px, self.n_bands
        rng = self._rng(1)
        scene = np.zeros((nb, p, p), dtype=np.float32)
        spectra = rng.uniform(0.03, 0.35, size=(3, nb)).astype(np.float32)
        for scale, weight in ((48, 0.6), (12, 0.3), (3, 0.1)):
            n = -(-p // scale)
            cells = rng.random((n, n), dtype=np.float32)
            big = np.repeat(np.repeat(cells, scale, axis=0), scale, axis=1)[:p, :p]
            mix = rng.random((n, n), dtype=np.float32)
            mixb = np.repeat(np.repeat(mix, scale, axis=0), scale, axis=1)[:p, :p]
            for b in range(nb):
                scene[b] += weight * (big * spectra[0, b] + mixb * spectra[1, b])
        for b in range(nb):
            scene[b] = ndimage.gaussian_filter(scene[b], 0.7, mode="wrap") + spectra[2, b] / 4
        noise = self._rng(2).standard_normal((nb, p, p), dtype=np.float32)
        self._cache["scene"], self._cache["noise"] = scene, noise

    def _per_date(self) -> dict[str, np.ndarray]:
        with _BUILD:  # dask threads read windows at once: build once, whole
            if "gain" not in self._cache:
                self._build_per_date()
        return self._cache

    def _build_per_date(self) -> None:
        """Per-date gain, offset and field shifts."""
        rng = self._rng(3)
        t, nb = self.n_dates, self.n_bands
        gain = rng.uniform(0.9, 1.1, (t, nb)).astype(np.float32)
        offset = rng.uniform(-0.01, 0.01, (t, nb)).astype(np.float32)
        gain[0], offset[0] = 1.0, 0.0
        shift = rng.integers(0, self.period_px, (t, nb, 2))
        self._cache.update(gain=gain, offset=offset, shift=shift)

    def objects(self) -> np.ndarray:
        """(n, 6) int64 planted objects: row0, row1, col0, col1, event date index, kind.

        Kind 1 = removed (present before the event date), 0 = appeared (present from it).
        """
        with _BUILD:  # the planted objects and their deltas appear together
            if "objects" not in self._cache:
                self._build_objects()
        return self._cache["objects"]

    def _build_objects(self) -> None:
        """Planted objects (one per ``object_spacing_px`` cell) and their per-band deltas."""
        rng = self._rng(4)
        s = self.object_spacing_px
        ny, nx = self.shape
        rows = []
        for r in range(0, ny - s + 1, s):
            for c in range(0, nx - s + 1, s):
                h, w = rng.integers(3, 11, 2)
                r0 = r + int(rng.integers(8, s - h - 8))
                c0 = c + int(rng.integers(8, s - w - 8))
                event = int(rng.integers(1, self.n_dates))
                rows.append([r0, r0 + h, c0, c0 + w, event, int(rng.integers(0, 2))])
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, 6)
        self._cache["objects"] = arr
        self._cache["deltas"] = rng.uniform(0.06, 0.2, (len(arr), self.n_bands)) * np.where(
            rng.random((len(arr), 1)) < 0.5, 1, -0.4
        )

    def events(self) -> list[dict[str, Any]]:
        """Planted changes: bbox (rows, cols), kind, ``first_after`` date index."""
        return [
            {
                "rows": (int(o[0]), int(o[1])),
                "cols": (int(o[2]), int(o[3])),
                "kind": "removed" if o[5] else "appeared",
                "first_after": int(o[4]),
            }
            for o in self.objects()
        ]

    def clouds(self, t: int) -> np.ndarray:
        """(n, 4) int64 cloud rectangles of date ``t``: row0, row1, col0, col1."""
        key = f"clouds{t}"
        if key not in self._cache:
            rng = self._rng(5, t)
            ny, nx = self.shape
            mean_side = 120.0
            n = rng.poisson(self.cloud_fraction * ny * nx / mean_side**2) if t > 0 else 0
            side = rng.integers(40, 200, (n, 2))
            r0 = rng.integers(-100, ny, n)
            c0 = rng.integers(-100, nx, n)
            self._cache[key] = np.stack([r0, r0 + side[:, 0], c0, c0 + side[:, 1]], axis=1)
        return self._cache[key]

    # ------------------------------------------------------------------ reading
    def read(self, t: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """Bands and validity of date ``t`` over a window.

        Parameters
        ----------
        t
            Date index.
        rows, cols
            Window (slices with explicit start and stop, step 1).

        Returns
        -------
        bands : numpy.ndarray
            (B, h, w) float32 reflectance.
        valid : numpy.ndarray
            (h, w) bool.
        """
        r0, r1, c0, c1 = rows.start, rows.stop, cols.start, cols.stop
        h, w = r1 - r0, c1 - c0
        scene, noise = self._fields()
        per = self._per_date()
        out = np.empty((self.n_bands, h, w), dtype=np.float32)
        tmp = np.empty((h, w), dtype=np.float32)
        objs = self.objects()
        deltas = self._cache["deltas"]
        hit = (objs[:, 0] < r1) & (objs[:, 1] > r0) & (objs[:, 2] < c1) & (objs[:, 3] > c0)
        present = np.where(objs[:, 5] == 1, t < objs[:, 4], t >= objs[:, 4])
        for b in range(self.n_bands):
            _periodic(scene[b], r0, c0, out[b])
            for i in np.flatnonzero(hit & present):
                o = objs[i]
                sr = slice(max(o[0], r0) - r0, min(o[1], r1) - r0)
                sc = slice(max(o[2], c0) - c0, min(o[3], c1) - c0)
                out[b, sr, sc] += np.float32(deltas[i, b])
            out[b] *= per["gain"][t, b]
            out[b] += per["offset"][t, b]
            dy, dx = per["shift"][t, b]
            _periodic(noise[b], r0 + int(dy), c0 + int(dx), tmp)
            tmp *= np.float32(self.noise_sigma)
            out[b] += tmp
        valid = np.ones((h, w), dtype=bool)
        for cr0, cr1, cc0, cc1 in self.clouds(t):
            sr = slice(max(cr0, r0) - r0, max(min(cr1, r1) - r0, 0))
            sc = slice(max(cc0, c0) - c0, max(min(cc1, c1) - c0, 0))
            if sr.start < sr.stop and sc.start < sc.stop:
                valid[sr, sc] = False
                out[:, sr, sc] = np.float32(0.45)
        return out, valid


_FIELDS = (
    "shape",
    "n_dates",
    "n_bands",
    "seed",
    "noise_sigma",
    "object_spacing_px",
    "cloud_fraction",
    "crs",
    "pixel_m",
    "period_px",
)


def _periodic(field_2d: np.ndarray, r0: int, c0: int, out: np.ndarray) -> None:
    """Copy the window at (r0, c0) of the periodic extension of ``field_2d`` into ``out``."""
    p = field_2d.shape[0]
    h, w = out.shape
    r = 0
    while r < h:
        fr = (r0 + r) % p
        nr = min(h - r, p - fr)
        c = 0
        while c < w:
            fc = (c0 + c) % p
            nc = min(w - c, p - fc)
            out[r : r + nr, c : c + nc] = field_2d[fr : fr + nr, fc : fc + nc]
            c += nc
        r += nr
