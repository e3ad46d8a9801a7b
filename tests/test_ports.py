"""Real-background cases (pipeline/simulate/ports.py) and their scoring
(pipeline/evaluation/ports.py).

The scoring tests use small hand-made cases; the port tests read ``../shared/data/sen2ships``
and skip cleanly when it is absent (a fresh clone has no ``../shared``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.ports import (
    Detection,
    add_counts,
    cva_otsu_objects,
    label_detections,
    length_bin,
    ratios,
    score_case,
)
from pipeline.simulate.ports import decode_rle, observe

SHIPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sen2ships"


def _det(kind: str, mask: np.ndarray, span: tuple[int, int] = (0, 1)) -> Detection:
    rows, cols = np.nonzero(mask)
    return Detection(kind, rows, cols, span)


def _box(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[r0:r1, c0:c1] = True
    return m


# --- RLE -------------------------------------------------------------------------------------


def test_decode_rle_is_column_major() -> None:
    # 3 x 2 image, column-major runs: 1 background, 2 object, 3 background
    mask = decode_rle("[1, 2, 3]", "[3, 2]")
    expected = np.array([[False, False], [True, False], [True, False]])
    np.testing.assert_array_equal(mask, expected)


def test_decode_rle_rejects_wrong_total() -> None:
    with pytest.raises(ValueError, match="add up"):
        decode_rle([1, 2], [3, 2])


# --- scoring ---------------------------------------------------------------------------------

SHAPE = (40, 40)


def _two_ships() -> list[np.ndarray]:
    return [_box(SHAPE, 5, 8, 5, 15), _box(SHAPE, 25, 28, 20, 32)]


def test_wrong_kind_on_a_ship_counts_against_sign_and_recall() -> None:
    ships = _two_ships()
    changes = {1: ("removed", 1), 2: ("removed", 1)}
    dets = [
        _det("removed", _box(SHAPE, 5, 8, 5, 10)),  # right kind on ship 1
        _det("appeared", _box(SHAPE, 5, 8, 10, 15)),  # wrong kind on ship 1
        _det("appeared", _box(SHAPE, 25, 28, 20, 32)),  # wrong kind on ship 2
    ]
    c = score_case(dets, ships, changes, np.array([80.0, 120.0]))
    assert c["n_found"] == 1 and c["missed"] == [2] and c["touched_not_found"] == [2]
    assert c["n_on_changed"] == 3 and c["n_right_kind"] == 1 and c["n_false_alarms"] == 0
    r = ratios(add_counts({}, c, area_km2=2.0, n_pairs=1))
    assert r["recall"] == 0.5 and r["sign_accuracy"] == round(1 / 3, 4)
    assert r["recall_by_length"]["50-100m"]["recall"] == 1.0
    assert r["recall_by_length"]["100-200m"]["recall"] == 0.0


def test_touching_through_the_one_pixel_margin_and_false_alarms() -> None:
    ships = _two_ships()
    changes = {1: ("appeared", 1)}  # ship 2 stayed
    dets = [
        _det("appeared", _box(SHAPE, 8, 10, 5, 15)),  # one row below ship 1: touches
        _det("appeared", _box(SHAPE, 10, 12, 5, 15)),  # three rows below: does not
        _det("removed", _box(SHAPE, 25, 28, 20, 32)),  # on the ship that stayed
    ]
    c = score_case(dets, ships, changes, np.array([80.0, 120.0]))
    assert c["n_found"] == 1 and c["n_on_changed"] == 1
    assert c["n_false_alarms"] == 2 and c["n_on_stayed"] == 1
    r = ratios(add_counts({}, c, area_km2=4.0, n_pairs=2))
    assert r["false_alarms_per_km2_per_pair"] == 0.25  # 2 / (4 km2 x 2 pairs)


def test_series_detection_must_hold_the_change_date() -> None:
    ships = _two_ships()
    changes = {1: ("removed", 3), 2: ("appeared", 2)}  # first date showing the change
    dets = [
        _det("removed", ships[0], (2, 3)),  # 2 < 3 <= 3: right interval
        _det("appeared", ships[1], (2, 4)),  # 2 < 2 fails: too late
    ]
    c = score_case(dets, ships, changes, np.array([80.0, 120.0]))
    assert c["n_found"] == 1 and c["missed"] == [2]
    assert c["n_right_kind"] == 2  # sign accuracy ignores dates


def test_outcome_labels_true_wrong_kind_false_alarm_and_neutral() -> None:
    ships = [*_two_ships(), _box(SHAPE, 15, 18, 30, 38)]  # ship 3 stayed
    changes = {1: ("removed", 3), 2: ("appeared", 2)}
    dets = [
        _det("removed", ships[0], (2, 3)),  # right kind, holds date 3: true
        _det("appeared", ships[0], (2, 3)),  # wrong kind on ship 1: false
        _det("removed", _box(SHAPE, 35, 38, 2, 6)),  # on nothing: false alarm
        _det("removed", ships[2], (2, 3)),  # on the ship that stayed: false alarm
        _det("removed", ships[0], (3, 4)),  # right kind, not its date: neutral
        _det("appeared", _box(SHAPE, 8, 9, 5, 15), (1, 2)),  # wrong kind, in ship 1's margin
    ]
    assert label_detections(dets, ships, changes) == [1, 0, 0, 0, None, 0]
    # touching two changed ships: true when either is its kind and date
    both = _box(SHAPE, 5, 28, 12, 22)
    assert label_detections([_det("appeared", both, (1, 2))], ships, changes) == [1]
    assert label_detections([_det("appeared", both, (2, 3))], ships, changes) == [None]


def test_case_outcomes_fill_what_a_pair_does_not_write() -> None:
    from pipeline.evaluation.ports import Detection
    from pipeline.evaluation.ports_bench import PAIR_FILLED, case_outcomes
    from pipeline.kernels.detect.calibration import MASK_DISTANCE_CAP_PX, design_outcomes

    ships = _two_ships()
    props = {"score": 80.0, "score_peak": 400.0, "n_seed_pixels": 12, "confidence": 1.0}
    dets = [
        Detection("removed", *np.nonzero(ships[0]), properties=props),
        Detection("removed", *np.nonzero(_box(SHAPE, 35, 38, 2, 6)), properties=props),
        Detection("appeared", *np.nonzero(ships[1])),  # no properties (a baseline's): skipped
    ]
    unusable = np.zeros(SHAPE, bool)
    unusable[5:8, 18] = True  # 4 px right of ship 1's last column (14)
    outs = case_outcomes(dets, ships, {1: ("removed", 1)}, "pair", 38.9, unusable)
    assert [o["label"] for o in outs] == [1, 0]
    assert outs[0]["mask_distance_px"] == 4.0
    assert outs[1]["mask_distance_px"] == float(MASK_DISTANCE_CAP_PX)
    for o in outs:
        assert {k: o[k] for k in PAIR_FILLED} == PAIR_FILLED
        assert o["noise_confidence"] == 1.0 and o["seed_level"] == 38.9 and o["path"] == "pair"
    x = design_outcomes(outs, seed_level=1.0)  # each row in units of its own seed level
    np.testing.assert_allclose(x[:, 0], np.log(400.0 / 38.9))
    assert (x[:, 4] == 1.0).all()  # one date each side


def test_pooled_ratios_are_ratios_of_summed_counts() -> None:
    ships = _two_ships()
    a = score_case([_det("removed", ships[0])], ships, {1: ("removed", 1)}, np.array([80, 120]))
    b = score_case([], ships, {1: ("removed", 1), 2: ("removed", 1)}, np.array([80, 120]))
    total = add_counts(add_counts({}, a, 1.0, 1), b, 3.0, 1)
    r = ratios(total)
    assert r["recall"] == round(1 / 3, 4) and r["counts"]["km2_pairs"] == 4.0
    assert ratios({})["recall"] is None


def test_length_bins() -> None:
    assert [length_bin(v) for v in (20, 50, 150, 400)] == ["<50m", "50-100m", "100-200m", ">200m"]


def test_cva_otsu_objects_signs_and_min_area() -> None:
    rng = np.random.default_rng(1)
    before = rng.normal(0.05, 0.002, (3, 60, 60)).astype(np.float32)
    after = before + rng.normal(0, 0.002, before.shape).astype(np.float32)
    after[:, 10:14, 10:20] += 0.2  # a ship arrives
    after[:, 40:44, 30:40] -= 0.03  # a bright thing left (darker after)
    after[:, 50, 50] += 0.3  # one pixel: under the minimum area
    before[:, 40:44, 30:40] += 0.2
    ok = np.ones((60, 60), bool)
    dets = cva_otsu_objects(before, after, ok, min_px=3)
    kinds = sorted((d.kind, int(d.rows.min())) for d in dets)
    assert kinds == [("appeared", 10), ("removed", 40)]


def test_observe_keeps_the_scene_but_changes_the_date() -> None:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:64, 0:64]
    scene = np.stack([0.05 + 0.001 * xx + 0.0005 * yy] * 5).astype(np.float32)
    names = ("blue", "green", "red", "nir", "swir16")
    obs, eff = observe(scene, names, rng)
    assert obs.shape == scene.shape and np.hypot(*eff.shift_px) <= 0.5
    assert all(0.94 <= g <= 1.06 for g in eff.gain)
    d = (obs - scene)[:, 8:-8, 8:-8].mean(axis=(1, 2))
    assert abs(d[0]) < 0.02 and d[0] > d[-1] - 0.003  # haze is blue-heavy, small


# --- the real ports --------------------------------------------------------------------------


def _port(name: str):
    from pipeline.simulate.ports import read_port

    folder = SHIPS / name
    if not folder.is_dir():
        pytest.skip(f"shared sen2ships data not found at {folder}")
    return read_port(folder)


def test_rle_matches_the_algiers_binary_masks() -> None:
    from PIL import Image

    scene = _port("algiers")
    png = next((SHIPS / "algiers" / "algiers_binary_masks" / "SegmentationClass").glob("*.png"))
    reference = np.asarray(Image.open(png))[..., 0] == 255
    np.testing.assert_array_equal(scene.ships > 0, reference)
    assert scene.n_ships == 27 and 7.5 < scene.pixel_size_m < 8.5  # 10 m Mercator at 36.8 N


@pytest.mark.parametrize("port", ["algiers", "busan"])
def test_removal_leaves_water_like_its_surroundings(port: str) -> None:
    from scipy import ndimage

    from pipeline.simulate.ports import HALO_PX, NOISE_SIGMA, RING_PX, remove_ships, water_fill

    scene = _port(port)
    wf = water_fill(scene)
    ids = list(range(1, scene.n_ships + 1))
    out = remove_ships(scene, ids, np.random.default_rng(0), wf)
    filled = np.logical_or.reduce(wf.footprints)
    np.testing.assert_array_equal(out[:, ~filled], scene.bands[:, ~filled])  # nothing else
    nir = scene.band_names.index("nir")
    eight = np.ones((3, 3), bool)
    offsets = []

    def spread(v: np.ndarray) -> float:  # robust sigma, with the sensor noise every date gets
        return float(np.hypot(np.subtract(*np.percentile(v, [75, 25])) / 1.349, NOISE_SIGMA))

    for i, foot in enumerate(wf.footprints, start=1):
        ring = ndimage.binary_dilation(foot, eight, iterations=RING_PX) & ~foot & wf.water
        if ring.sum() < 30:  # the fill draws from a wider ring then
            continue
        for b in range(len(scene.band_names)):
            fill_px, water_px = out[b][foot], out[b][ring]
            # the fill is the water around it: median within one (robust) sigma
            seen = spread(water_px)
            offsets.append(abs(float(np.median(fill_px) - np.median(water_px))) / seen)
            assert offsets[-1] < 1.0, (i, b)
            if b == nir:  # the ship (bright in NIR) is gone
                ship_px = scene.bands[b][scene.ship_masks[i - 1]]
                assert np.percentile(fill_px, 90) < np.percentile(ship_px, 90)
                assert np.percentile(fill_px, 90) <= np.percentile(out[b][wf.water], 99.9)
    assert np.mean(offsets) < 0.35
    assert HALO_PX >= 1


def test_a_ship_away_on_several_dates_leaves_the_same_water() -> None:
    """A series fills an absent ship's footprint from one water map: its pixels do not
    change between two dates it is away, whichever other ships (sharing pixels of its
    footprint or not) are away with it."""
    from pipeline.simulate.ports import remove_ships, water_fill, water_map

    scene = _port("busan")
    wf = water_fill(scene)
    water = water_map(scene, np.random.default_rng(0), wf)
    ids = np.arange(1, scene.n_ships + 1)
    rng = np.random.default_rng(1)
    for _ in range(3):
        one = int(rng.choice(ids))
        others = [int(i) for i in rng.choice(ids, size=len(ids) // 2, replace=False)]
        date_a = remove_ships(scene, [one], rng, wf, water)
        date_b = remove_ships(scene, sorted({one, *others}), rng, wf, water)
        foot = wf.footprints[one - 1] & ~((scene.ships > 0) & (scene.ships != one))
        np.testing.assert_array_equal(date_a[:, foot], date_b[:, foot])
        assert not np.array_equal(date_a[:, foot], scene.bands[:, foot])  # it was filled


def test_a_removed_ship_is_filled_with_a_patch_of_the_nearest_water() -> None:
    """The fill is the footprint's shape copied from the nearest place wholly on water (its
    texture: equal to the scene there up to one offset per band), at the level of the water
    right around the ship (a synthetic scene: a quay, a textured basin whose level rises
    eastwards, one ship moored at the quay)."""
    from affine import Affine
    from scipy import ndimage

    from pipeline.simulate.ports import RING_PX, PortScene, water_fill, water_map

    ny, nx = 80, 120
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    bands = np.empty((5, ny, nx), np.float32)
    level = 0.03 + 0.0004 * xx + 0.002 * np.sin(yy / 3.0) * np.cos(xx / 4.0)
    for b, scale in enumerate((1.2, 1.0, 0.8, 0.5, 0.4)):
        bands[b] = level * scale
    bands[:, :, :20] = 0.25  # the quay (bright in every band)
    ship = np.zeros((ny, nx), bool)
    ship[30:40, 21:27] = True  # alongside the quay
    bands[:, ship] = 0.2
    scene = PortScene(
        "synthetic",
        bands,
        ("blue", "green", "red", "nir", "swir16"),
        ship.astype(np.int32),
        [ship],
        Affine(10.0, 0, 0, 0, -10.0, 0),
        "EPSG:3857",
        10.0,
    )
    wf = water_fill(scene)
    filled = water_map(scene, np.random.default_rng(0), wf)
    rows, cols = np.nonzero(wf.footprints[0])
    fill = filled[:, rows, cols]
    found = None
    for dy in range(-40, 41):
        for dx in range(-60, 61):
            r, c = rows + dy, cols + dx
            if (dy, dx) == (0, 0) or r.min() < 0 or c.min() < 0 or r.max() >= ny or c.max() >= nx:
                continue
            diff = scene.bands[:, r, c] - fill
            if np.all(np.ptp(diff, axis=1) < 1e-6):
                found = (dy, dx)
                break
        if found:
            break
    assert found is not None, "the fill is not a patch of the scene's texture"
    assert wf.water[rows + found[0], cols + found[1]].all()
    assert np.hypot(*found) < 15  # the nearest such place, not anywhere
    eight = np.ones((3, 3), bool)
    ring = ndimage.binary_dilation(wf.footprints[0], eight, iterations=RING_PX) & wf.water
    np.testing.assert_allclose(
        np.median(fill, axis=1), np.median(scene.bands[:, ring], axis=1), atol=1e-6
    )


def test_a_real_pair_case_yields_outcomes_that_agree_with_its_counts() -> None:
    from pipeline.config import load_config
    from pipeline.evaluation.ports_bench import run_pair_case
    from pipeline.simulate.ports import crop_scene, pair_cases

    scene, _ = crop_scene(_port("honolulu"), 120_000)
    case = pair_cases(scene, 7)[0]
    ours, _base, _info, outs = run_pair_case(case, scene, load_config(None))
    # a pair's interval always holds its change: no neutral outcome, and true = right kind
    assert sum(o["label"] for o in outs) == ours["n_right_kind"]
    n_wrong = ours["n_on_changed"] - ours["n_right_kind"]
    assert sum(1 - o["label"] for o in outs) == ours["n_false_alarms"] + n_wrong
    assert len(outs) == ours["n_detections"] > 0
    assert all(o["path"] == "pair" and o["score_peak"] > 0 for o in outs)
