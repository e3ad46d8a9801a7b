"""Sites: the seed files are valid, at the real places, and the site grid is snapped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import SiteError
from pipeline.sites import get_site, known_sites, read_site

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"


def test_known_sites() -> None:
    assert known_sites(SEEDS) == ["khmeimim", "tartus"]


@pytest.mark.parametrize(
    ("name", "lat", "lon", "kinds"),
    [
        ("khmeimim", 35.401, 35.949, {"runway", "apron"}),
        ("tartus", 34.915, 35.874, {"pier", "quay"}),
    ],
)
def test_sites_at_real_places(name: str, lat: float, lon: float, kinds: set[str]) -> None:
    site = get_site(name, SEEDS)
    c = site.aoi.centroid
    assert abs(c.y - lat) < 0.02 and abs(c.x - lon) < 0.02
    assert kinds <= {z.kind for z in site.zones}
    assert site.epsg == 32636
    for z in site.zones:
        assert site.aoi.contains(z.geometry), z.name


def test_khmeimim_runway_lengths() -> None:
    site = get_site("khmeimim", SEEDS)
    lengths = {}
    for z in site.zones:
        if z.kind == "runway":
            rect = site.to_utm(z.geometry).minimum_rotated_rectangle
            xs, ys = rect.exterior.coords.xy
            sides = [np.hypot(xs[i + 1] - xs[i], ys[i + 1] - ys[i]) for i in range(2)]
            lengths[z.name] = max(sides)
    assert 2700 < lengths["runway-east"] < 2900
    assert 3100 < lengths["runway-west"] < 3300


def test_geobox_snapped_and_covers_aoi() -> None:
    for name in known_sites(SEEDS):
        site = get_site(name, SEEDS)
        gb = site.geobox(10.0)
        a = gb.affine
        assert a.a == 10 and a.e == -10
        assert a.c % 60 == 0 and a.f % 60 == 0
        minx, miny, maxx, maxy = site.to_utm(site.aoi).bounds
        b = gb.boundingbox
        assert b.left <= minx and b.right >= maxx and b.bottom <= miny and b.top >= maxy
        zr = site.zone_raster(gb)
        assert zr.shape == tuple(gb.shape)
        assert set(np.unique(zr)) == set(range(len(site.zones) + 1))


def _write(tmp_path: Path, doc: dict) -> Path:
    p = tmp_path / "s.geojson"
    p.write_text(json.dumps(doc))
    return p


def _square(x0: float, y0: float, d: float) -> dict:
    ring = [[x0, y0], [x0 + d, y0], [x0 + d, y0 + d], [x0, y0 + d], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


@pytest.mark.parametrize(
    ("features", "props", "needle"),
    [
        ([], {"epsg": 32636}, "no feature has role 'aoi'"),
        ([{"role": "aoi", "geometry": _square(35.9, 35.4, 0.01)}], {}, "epsg"),
        ([{"role": "aoi", "geometry": _square(35.4, 135.9, 0.01)}], {"epsg": 32636}, "lon/lat"),
        (
            [
                {
                    "role": "aoi",
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [
                            [
                                [35.9, 35.4],
                                [35.91, 35.41],
                                [35.91, 35.4],
                                [35.9, 35.41],
                                [35.9, 35.4],
                            ]
                        ],
                    },
                }
            ],
            {"epsg": 32636},
            "invalid polygon",
        ),
        (
            [
                {"role": "aoi", "geometry": _square(35.9, 35.4, 0.01)},
                {"role": "zone", "name": "far", "geometry": _square(36.5, 35.4, 0.01)},
            ],
            {"epsg": 32636},
            "outside the AOI",
        ),
    ],
)
def test_bad_site_files(tmp_path: Path, features: list, props: dict, needle: str) -> None:
    doc = {
        "type": "FeatureCollection",
        "properties": props,
        "features": [
            {
                "type": "Feature",
                "properties": {k: v for k, v in f.items() if k != "geometry"},
                "geometry": f["geometry"],
            }
            for f in features
        ],
    }
    with pytest.raises(SiteError, match=needle):
        read_site(_write(tmp_path, doc))


def test_unknown_site_lists_known() -> None:
    with pytest.raises(SiteError, match="khmeimim, tartus"):
        get_site("nowhere", SEEDS)
