"""Synthetic liver tumors: placement, size, intensity and reproducibility, measured with scipy on real CT.

Every statistic is measured on the output (connected components, equivalent diameters, HU against the liver
around each lesion) and compared with the configuration, not with the generator's own bookkeeping.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.synthetic_tumors import TumorConfig, insert_tumors, synthesize_tumors  # noqa: E402

ndi = pytest.importorskip("scipy.ndimage")

DATA = Path(__file__).parent / "data"
LITS117_SPACING = (1.5, 1.5, 1.5)  # the header says 1 mm; the 128-voxel crop spans a whole liver


@pytest.fixture(scope="module")
def lits117():
    """(hu int16, liver without tumor bool, labels uint8) of lits117_roi128 in the canonical orientation."""
    from resunet_trt import io as rio

    ct = rio.load_ct(DATA / "lits117_roi128" / "ct.nii.gz")
    labels = rio.load_label(DATA / "lits117_roi128" / "label.nii.gz", ct)
    return ct.hu, labels == 1, labels


@pytest.fixture(scope="module")
def totalseg():
    """(hu int16, liver bool, spacing) of totalseg_abdomen3mm (no tumors)."""
    from resunet_trt import io as rio

    ct = rio.load_ct(DATA / "totalseg_abdomen3mm" / "ct.nii.gz")
    liver = rio.load_label(DATA / "totalseg_abdomen3mm" / "liver_pseudolabel.nii.gz", ct) == 1
    return ct.hu, liver, ct.spacing


def _ellipsoid_liver(shape=(80, 110, 130), spacing=(1.5, 1.5, 1.5), seed=0, tube_hu=None):
    """A big ellipsoid 'liver' of 100 +- 15 HU in 0 HU, optionally with a bright tube of radius 3 mm along W."""
    rng = np.random.default_rng(seed)
    d, h, w = (np.arange(n, dtype=np.float64)[:, None, None] for n in shape)
    h, w = h.reshape(1, -1, 1), w.reshape(1, 1, -1)
    c = [(n - 1) / 2 for n in shape]
    r = [0.46 * n for n in shape]
    liver = ((d - c[0]) / r[0]) ** 2 + ((h - c[1]) / r[1]) ** 2 + ((w - c[2]) / r[2]) ** 2 <= 1.0
    hu = np.where(liver, 100.0, 0.0) + rng.normal(0.0, 15.0, size=shape)
    tube = np.zeros(shape, dtype=bool)
    if tube_hu is not None:
        radial = np.hypot((d - c[0]) * spacing[0], (h - c[1]) * spacing[1])
        tube = np.broadcast_to(radial <= 3.0, shape) & liver
        hu = np.where(tube, hu + tube_hu, hu)
    return hu.astype(np.float32), liver, tube


def _stack_from_lits117(lits117, first: int):
    """A 2.5D training sample: 3 slices, 3 apart, upsampled in-plane to 256x256 (nearest, enough here)."""
    hu, liver, _ = lits117
    picks = [first, first + 3, first + 6]
    idx = np.arange(256) // 2
    return (
        np.ascontiguousarray(hu[picks][:, idx][:, :, idx].astype(np.float32)),
        np.ascontiguousarray(liver[picks][:, idx][:, :, idx]),
    )


def _equivalent_diameter_mm(voxels: int, spacing) -> float:
    return (6.0 * voxels * float(np.prod(spacing)) / math.pi) ** (1.0 / 3.0)


ALWAYS = dict(probability=1.0)
PLAIN = dict(probability=1.0, rim_probability=0.0, necrosis_probability=0.0, mass_effect=False)


# --- placement -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tumors_only_inside_liver_and_nothing_changes_outside(lits117, totalseg, seed):
    cfg = TumorConfig(count=(2, 6), **ALWAYS)
    hu, liver, _ = lits117
    for vol, mask_liver, spacing in ((hu, liver, LITS117_SPACING), totalseg):
        out, mask = insert_tumors(vol, mask_liver, spacing, np.random.default_rng(seed), cfg)
        assert out.dtype == np.float32 and out.shape == vol.shape
        assert mask.dtype == np.bool_ and mask.shape == vol.shape
        assert mask.any()
        assert not (mask & ~mask_liver).any()
        np.testing.assert_array_equal(out[~mask_liver], vol[~mask_liver].astype(np.float32))


def test_input_arrays_unchanged(lits117):
    hu, liver, _ = lits117
    hu_before, liver_before = hu.copy(), liver.copy()
    hu_f = hu.astype(np.float32)
    hu_f_before = hu_f.copy()
    for vol in (hu, hu_f):
        insert_tumors(vol, liver, LITS117_SPACING, np.random.default_rng(5), TumorConfig(count=(3, 3), **ALWAYS))
    np.testing.assert_array_equal(hu, hu_before)
    np.testing.assert_array_equal(hu_f, hu_f_before)
    np.testing.assert_array_equal(liver, liver_before)


def test_same_seed_same_tumors_other_seed_other_tumors(totalseg):
    hu, liver, spacing = totalseg
    cfg = TumorConfig(count=(1, 4), **ALWAYS)
    a = insert_tumors(hu, liver, spacing, np.random.default_rng(11), cfg)
    b = insert_tumors(hu, liver, spacing, np.random.default_rng(11), cfg)
    c = insert_tumors(hu, liver, spacing, np.random.default_rng(12), cfg)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    # The generator's state after the call is part of the contract too: the next draw matches.
    ra, rb = np.random.default_rng(3), np.random.default_rng(3)
    insert_tumors(hu, liver, spacing, ra, cfg)
    insert_tumors(hu, liver, spacing, rb, cfg)
    assert ra.integers(1 << 30) == rb.integers(1 << 30)


def test_probability_zero_gives_no_tumors_and_the_same_image(totalseg):
    hu, liver, spacing = totalseg
    cfg = TumorConfig(probability=0.0, count=(3, 5))
    for seed in range(5):
        out, mask = insert_tumors(hu, liver, spacing, np.random.default_rng(seed), cfg)
        assert not mask.any()
        np.testing.assert_array_equal(out, hu.astype(np.float32))


def test_probability_is_the_fraction_of_samples_with_tumors():
    hu, liver, _ = _ellipsoid_liver(shape=(20, 60, 60), spacing=(3.0, 3.0, 3.0))
    cfg = TumorConfig(probability=0.3, count=(1, 1), diameter_mm=(10.0, 10.0), mass_effect=False)
    rng = np.random.default_rng(0)
    hits = sum(bool(insert_tumors(hu, liver, (3.0, 3.0, 3.0), rng, cfg)[1].any()) for _ in range(300))
    # Binomial(300, 0.3): mean 90, sd 7.9.
    assert 90 - 4 * 7.9 < hits < 90 + 4 * 7.9


def test_empty_liver_gives_no_tumors():
    hu = np.zeros((4, 32, 32), dtype=np.float32)
    out, mask = insert_tumors(hu, np.zeros_like(hu, dtype=bool), (3, 1, 1), np.random.default_rng(0),
                              TumorConfig(**ALWAYS))
    assert not mask.any() and np.array_equal(out, hu)


@pytest.mark.parametrize("count", [(0, 0), (1, 1), (2, 4), (5, 7)])
def test_count_range_honoured(count):
    spacing = (1.5, 1.5, 1.5)
    hu, liver, _ = _ellipsoid_liver(spacing=spacing)
    cfg = TumorConfig(count=count, diameter_mm=(5.0, 20.0), **PLAIN)
    seen = set()
    for seed in range(6):
        _, mask = insert_tumors(hu, liver, spacing, np.random.default_rng(seed), cfg)
        _, n = ndi.label(mask)
        assert count[0] <= n <= count[1]
        seen.add(n)
    if count[1] > count[0]:
        assert len(seen) > 1


# --- size ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_diameters_within_configured_range_and_log_uniform():
    spacing = (1.5, 1.5, 1.5)
    lo, hi = 6.0, 30.0
    hu, liver, _ = _ellipsoid_liver(shape=(100, 130, 150), spacing=spacing)
    depth_mm = ndi.distance_transform_edt(liver, sampling=spacing)
    # Only lesions that the liver's surface cannot clip: the farthest point of an elongated, distorted ellipsoid
    # is at most 1.7 radii from its centre. One depth for all sizes, so that the selection keeps no size over
    # another.
    deep_mm = 0.85 * hi + 2.0
    cfg = TumorConfig(count=(5, 7), diameter_mm=(lo, hi), **PLAIN)
    measured = []
    for seed in range(30):
        _, mask = insert_tumors(hu, liver, spacing, np.random.default_rng(seed), cfg)
        lab, n = ndi.label(mask)
        sizes = ndi.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
        centres = ndi.center_of_mass(mask, lab, index=np.arange(1, n + 1))
        for size, c in zip(sizes, centres):
            if depth_mm[tuple(int(round(v)) for v in c)] > deep_mm:
                measured.append(_equivalent_diameter_mm(int(size), spacing))
    assert len(measured) >= 35
    measured = np.asarray(measured)
    # Shape distortion and voxelisation (a 6 mm lesion is 30 voxels of 1.5 mm) move the volume a little.
    assert measured.min() >= 0.8 * lo and measured.max() <= 1.15 * hi
    # Log-uniform: the logs spread over the whole interval, their mean near its middle (sd of the mean of
    # 35 uniform values: 0.05).
    logs = (np.log(measured) - math.log(lo)) / (math.log(hi) - math.log(lo))
    assert abs(float(np.mean(logs)) - 0.5) < 0.12
    assert np.mean(logs < 0.33) > 0.15 and np.mean(logs > 0.67) > 0.15


def test_thin_stack_shows_tumors_centred_off_its_slices(lits117):
    hu, liver = _stack_from_lits117(lits117, 40)
    spacing = (4.5, 0.75, 0.75)
    cfg = TumorConfig(count=(2, 4), diameter_mm=(20.0, 50.0), z_offset_fraction=0.8, **ALWAYS)
    off_stack = 0
    for seed in range(20):
        res = synthesize_tumors(hu, liver, spacing, np.random.default_rng(seed), cfg)
        assert not (res.mask & ~liver).any()
        for t in res.tumors:
            if t.voxels and not -0.5 <= t.centre[0] <= 2.5:
                off_stack += 1
    assert off_stack > 0


# --- intensity -------------------------------------------------------------------------------------------------------
def _contrast_per_lesion(out, mask, liver, spacing, min_voxels, centres=None, reference=None):
    """Mean HU in each lesion minus the mean HU of the liver 4..8 mm around it, one value per component.

    The reference ring excludes lesions and vessels (anything 60 HU off the liver median). With ``centres``
    ((n, 3) voxel positions), only the components holding one of them are measured, in that order (fragments
    of a lesion cut by the liver's edge are its faint rim, not its body); a centre outside the mask gives NaN.
    ``reference`` narrows the liver voxels the ring may use (default: all of ``liver``).
    """
    lab, n = ndi.label(mask)
    outside_mm = ndi.distance_transform_edt(~mask, sampling=spacing)
    nearest = ndi.distance_transform_edt(~mask, sampling=spacing, return_distances=False, return_indices=True)
    owner = lab[tuple(nearest)]
    ring_zone = (liver if reference is None else reference) & ~mask & (outside_mm >= 4.0) & (outside_mm <= 8.0)
    median = np.median(out[liver & ~mask])
    ring_zone &= np.abs(out - median) < 60
    if centres is None:
        ks = list(range(1, n + 1))
    else:
        idx = [tuple(int(round(v)) for v in c) for c in centres]
        ks = [int(lab[i]) if all(0 <= v < m for v, m in zip(i, mask.shape)) else 0 for i in idx]
    values = []
    for k in ks:
        comp = lab == k
        ring = ring_zone & (owner == k)
        ok = k > 0 and comp.sum() >= min_voxels and ring.sum() >= 30
        values.append(float(out[comp].mean() - out[ring].mean()) if ok else float("nan"))
    return np.asarray(values)


@pytest.mark.parametrize("case", ["totalseg", "lits117"])
def test_lesion_hu_relative_to_liver_within_configured_range(case, lits117, totalseg):
    if case == "totalseg":
        hu, liver, spacing = totalseg
        reference = liver
    else:
        hu, liver, labels = lits117
        spacing = LITS117_SPACING
        # The liver right next to a real tumor is darker (partial volume): not a fair reference.
        reference = liver & (ndi.distance_transform_edt(labels != 2, sampling=spacing) > 4.5)
    lo, hi = -70.0, -30.0
    cfg = TumorConfig(count=(3, 5), diameter_mm=(15.0, 35.0), contrast_hu=(lo, hi), texture_std_hu=(2.0, 6.0),
                      **PLAIN)
    values, drawn = [], []
    for seed in range(3):
        res = synthesize_tumors(hu, liver, spacing, np.random.default_rng(seed), cfg)
        centres = [t.centre for t in res.tumors]
        measured = _contrast_per_lesion(res.hu, res.mask, liver, spacing, 20, centres, reference)
        for value, tumor in zip(measured, res.tumors):
            if np.isfinite(value):
                values.append(value)
                drawn.append(tumor.contrast_hu)
    values, drawn = np.asarray(values), np.asarray(drawn)
    assert values.size >= 6
    # The soft edge dilutes the contrast in the mask's outer voxels (by about 10 % at these sizes), and the
    # liver's own HU varies by a few HU from place to place.
    assert values.max() <= 0.75 * hi + 5.0
    assert values.min() >= lo - 8.0
    assert values.max() - values.min() > 0.3 * (hi - lo)
    # Lesion by lesion, the measured contrast follows the drawn one: about 87 % of it (the soft edge), give or
    # take the liver's own variation under the lesion against the ring around it (up to 12 HU seen on lits117).
    assert np.abs(values - 0.87 * drawn).max() <= 16.0
    assert 0.75 <= np.median(values / drawn) <= 1.0


def test_enhancing_rim_is_brighter_than_the_lesion_core():
    spacing = (1.0, 1.0, 1.0)
    hu, liver, _ = _ellipsoid_liver(shape=(100, 130, 150), spacing=spacing)
    cfg = TumorConfig(count=(2, 3), diameter_mm=(25.0, 35.0), contrast_hu=(-50.0, -50.0), rim_probability=1.0,
                      rim_hu=(30.0, 30.0), rim_width_mm=3.0, texture_std_hu=(0.0, 0.0), probability=1.0,
                      necrosis_probability=0.0, mass_effect=False)
    out, mask = insert_tumors(hu, liver, spacing, np.random.default_rng(0), cfg)
    depth = ndi.distance_transform_edt(mask, sampling=spacing)
    shell = mask & (depth > 0.5) & (depth <= 3.0)
    core = mask & (depth > 6.0)
    assert shell.sum() > 100 and core.sum() > 100
    liver_mean = out[liver & ~ndi.binary_dilation(mask, iterations=8)].mean()
    assert out[core].mean() - liver_mean == pytest.approx(-50.0, abs=8.0)
    assert out[shell].mean() > out[core].mean() + 30.0


def test_necrotic_core_is_darker_than_the_lesion():
    spacing = (1.0, 1.0, 1.0)
    hu, liver, _ = _ellipsoid_liver(shape=(100, 130, 150), spacing=spacing)
    cfg = TumorConfig(count=(1, 1), diameter_mm=(40.0, 40.0), contrast_hu=(-30.0, -30.0), necrosis_probability=1.0,
                      necrosis_min_diameter_mm=30.0, necrosis_hu=(-50.0, -50.0), texture_std_hu=(0.0, 0.0),
                      rim_probability=0.0, probability=1.0, mass_effect=False)
    out, mask = insert_tumors(hu, liver, spacing, np.random.default_rng(1), cfg)
    c = ndi.center_of_mass(mask)
    d, h, w = np.indices(mask.shape)
    centre = mask & ((d - c[0]) ** 2 + (h - c[1]) ** 2 + (w - c[2]) ** 2 <= 16.0)  # within 4 mm of the centroid
    depth = ndi.distance_transform_edt(mask, sampling=spacing)
    outer = mask & (depth > 2.0) & (depth <= 5.0)
    assert centre.sum() > 100
    assert out[centre].mean() < out[outer].mean() - 30.0


# --- vessels ---------------------------------------------------------------------------------------------------------
def test_vessels_are_avoided():
    spacing = (1.0, 1.0, 1.0)
    hu, liver, tube = _ellipsoid_liver(shape=(60, 80, 100), spacing=spacing, tube_hu=150.0)
    to_tube_mm = ndi.distance_transform_edt(~tube, sampling=spacing)
    base = dict(count=(4, 6), diameter_mm=(8.0, 20.0), **PLAIN)
    closest = []
    for seed in range(8):
        _, mask = insert_tumors(hu, liver, spacing, np.random.default_rng(seed), TumorConfig(**base))
        assert not (mask & tube).any()
        if mask.any():
            closest.append(to_tube_mm[mask].min())
    assert min(closest) >= 1.4
    # Control: with the vessel check off (threshold above any HU) lesions do land on the tube.
    blind = TumorConfig(vessel_threshold_hu=1e4, **base)
    touched = 0
    for seed in range(8):
        _, mask = insert_tumors(hu, liver, spacing, np.random.default_rng(seed), blind)
        touched += bool(mask.any() and to_tube_mm[mask].min() < 1.0)
    assert touched > 0


def test_mass_effect_moves_liver_only_near_the_lesion(totalseg):
    hu, liver, spacing = totalseg
    diameter = 30.0
    base = dict(count=(1, 1), diameter_mm=(diameter, diameter), edge_blur_mm=(1.0, 1.0), **ALWAYS)
    pushed, mask = insert_tumors(hu, liver, spacing, np.random.default_rng(4),
                                 TumorConfig(mass_effect_strength=0.2, **base))
    still, mask_still = insert_tumors(hu, liver, spacing, np.random.default_rng(4),
                                      TumorConfig(mass_effect=False, **base))
    away_mm = ndi.distance_transform_edt(~(mask | mask_still), sampling=spacing)
    moved = pushed != still
    assert not (moved & ~liver).any()
    # Beyond the soft edge (sigma 1 mm) only the warp can change the liver: it must, and only within two
    # reaches of the lesion (1.7 radii each).
    assert (moved & (away_mm > 6.0)).sum() > 20
    assert away_mm[moved].max() <= 2 * 1.7 * diameter / 2 + 2 * max(spacing)


# --- arguments -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("probability", 1.5),
        ("probability", -0.1),
        ("count", (3, 1)),
        ("count", (-1, 2)),
        ("count", (1.5, 2)),
        ("diameter_mm", (0.0, 10.0)),
        ("diameter_mm", (20.0, 10.0)),
        ("diameter_mm", (5.0, float("nan"))),
        ("contrast_hu", (-10.0, -20.0)),
        ("texture_std_hu", (-1.0, 2.0)),
        ("texture_scale_mm", (0.0, 2.0)),
        ("edge_blur_mm", (-1.0, 1.0)),
        ("rim_probability", 2.0),
        ("rim_hu", "bright"),
        ("necrosis_probability", -1.0),
        ("vessel_distance_mm", -2.0),
        ("vessel_threshold_hu", float("inf")),
        ("irregularity", 0.9),
        ("mass_effect_strength", 0.8),
        ("max_tries", 0),
        ("mass_effect", "yes"),
        ("min_inside_fraction", 1.5),
    ],
)
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TumorConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        TumorConfig.from_dict({field: value})


def test_from_dict_reads_lists_and_rejects_unknown_keys():
    cfg = TumorConfig.from_dict({"count": [2, 3], "diameter_mm": [4, 8], "mass_effect": False})
    assert cfg.count == (2, 3) and cfg.diameter_mm == (4.0, 8.0) and cfg.mass_effect is False
    with pytest.raises(ValueError, match="diameter"):
        TumorConfig.from_dict({"diameter": [4, 8]})


def test_bad_arguments_raise():
    hu = np.zeros((3, 16, 16), dtype=np.float32)
    liver = np.ones_like(hu, dtype=bool)
    rng, cfg = np.random.default_rng(0), TumorConfig()
    with pytest.raises(TypeError, match="liver"):
        insert_tumors(hu, liver.astype(np.uint8), (1, 1, 1), rng, cfg)
    with pytest.raises(ValueError, match="liver"):
        insert_tumors(hu, liver[:2], (1, 1, 1), rng, cfg)
    with pytest.raises(ValueError, match="hu"):
        insert_tumors(hu[0], liver[0], (1, 1, 1), rng, cfg)
    with pytest.raises(TypeError, match="hu"):
        insert_tumors(hu.tolist(), liver, (1, 1, 1), rng, cfg)
    with pytest.raises(TypeError, match="rng"):
        insert_tumors(hu, liver, (1, 1, 1), 0, cfg)
    with pytest.raises(TypeError, match="config"):
        insert_tumors(hu, liver, (1, 1, 1), rng, {"probability": 1})
    with pytest.raises(ValueError, match="spacing"):
        insert_tumors(hu, liver, (1, 0, 1), rng, cfg)
    bad = hu.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        insert_tumors(bad, liver, (1, 1, 1), rng, cfg)
