"""The lesion confidence floor: sure-tumor pixels against a softmax reference, the voxel-to-pixel mapping by hand,
and lesions kept or turned into liver on hand-made volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from resunet_trt.confidence import (
    drop_unsure_lesions,
    log_odds_floor,
    nearest_source_index,
    refine_labels,
    sure_tumor,
)


def _softmax_tumor(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True))[:, 2]


@pytest.mark.parametrize("classes", [3, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("p", [0.5, 0.95, 0.999])
def test_sure_tumor_is_softmax_above_the_floor(classes, dtype, p):
    rng = np.random.default_rng(classes)
    logits = (rng.standard_normal((3, classes, 17, 13)) * 4).astype(dtype)
    logits[0, :, 0, 0] = [60.0, -60.0, 70.0] + [0.0] * (classes - 3)  # large values: no overflow
    got = sure_tumor(logits, log_odds_floor(p))
    prob = _softmax_tumor(logits)
    assert got.dtype == bool and got.shape == (3, 17, 13)
    clear = np.abs(prob - p) > 1e-5  # float32 against float64 right at the floor may go either way
    np.testing.assert_array_equal(got[clear], (prob >= p)[clear])
    assert got[0, 0, 0]
    assert 0 < got.sum() < got.size


def test_log_odds_floor():
    assert log_odds_floor(0.0) is None
    assert log_odds_floor(0.5) == 0.0
    assert log_odds_floor(0.95) == pytest.approx(math.log(19.0))
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_confidence"):
            log_odds_floor(bad)


def test_sure_tumor_needs_a_tumor_class():
    with pytest.raises(ValueError, match="C > 2"):
        sure_tumor(np.zeros((1, 2, 4, 4), np.float32), 0.0)
    with pytest.raises(ValueError, match="N, C, h, w"):
        sure_tumor(np.zeros((2, 4, 4), np.float32), 0.0)


def test_nearest_source_index_by_hand():
    # Whole-plane mapping, 4 label rows from 2 network rows: sources -0.25, 0.25, 0.75, 1.25.
    np.testing.assert_array_equal(nearest_source_index(4, 2), [0, 0, 1, 1])
    # General mapping, step 2 and origin 1: (Y + 0.5 - 1) / 2 - 0.5 = -0.75, -0.25, 0.25, 0.75, 1.25.
    np.testing.assert_array_equal(nearest_source_index(5, 3, 2.0, 1.0), [0, 0, 0, 1, 1])
    # Same size, identity.
    np.testing.assert_array_equal(nearest_source_index(6, 6), np.arange(6))


def _two_lesions():
    labels = np.zeros((3, 8, 8), np.uint8)
    labels[:, 1:7, 1:7] = 1
    labels[1, 2:4, 2:4] = 2  # lesion A
    labels[1, 5:7, 5:7] = 2  # lesion B
    return labels


def test_a_lesion_without_a_sure_pixel_becomes_liver():
    labels = _two_lesions()
    sure = np.zeros((3, 4, 4), bool)  # half the label plane: label (y, x) -> network (y // 2, x // 2)
    sure[1, 1, 1] = True  # under lesion A's voxels (2..3, 2..3)
    out, removed = drop_unsure_lesions(labels, sure, {})
    assert removed == 1
    expected = labels.copy()
    expected[1, 5:7, 5:7] = 1  # lesion B: liver, not background
    np.testing.assert_array_equal(out, expected)
    # A sure pixel that no lesion voxel maps to keeps nothing.
    sure[:] = False
    sure[0, 3, 3] = True
    out, removed = drop_unsure_lesions(labels, sure, {})
    assert removed == 2 and not (out == 2).any() and np.count_nonzero(out) == np.count_nonzero(labels)


def test_every_lesion_sure_returns_the_input_itself():
    labels = _two_lesions()
    sure = np.ones((3, 4, 4), bool)
    out, removed = drop_unsure_lesions(labels, sure, {})
    assert removed == 0 and out is labels


def test_general_mapping_places_the_sure_pixel():
    # step 0.5, origin 0: label Y samples network row (Y + 0.5) / 0.5 - 0.5 = 2Y + 0.5 -> nearest 2Y (ties to even).
    labels = _two_lesions()
    sure = np.zeros((3, 16, 16), bool)
    sure[1, 10, 10] = True  # label (5, 5): lesion B
    out, removed = drop_unsure_lesions(labels, sure, {"step": (0.5, 0.5), "origin": (0.0, 0.0)})
    assert removed == 1
    assert (out[1, 5:7, 5:7] == 2).all() and (out[1, 2:4, 2:4] == 1).all()


def test_mismatched_depth_is_refused():
    with pytest.raises(ValueError, match="share D"):
        drop_unsure_lesions(_two_lesions(), np.zeros((2, 4, 4), bool), {})


def test_refine_without_rules_changes_nothing():
    labels = _two_lesions()
    assert refine_labels(labels, (1.0, 1.0, 1.0), anatomy=False, sure=None, mapping={}, connectivity=26) is None
    sure = np.zeros((3, 4, 4), bool)
    out = refine_labels(labels, (1.0, 1.0, 1.0), anatomy=False, sure=sure, mapping={}, connectivity=26)
    assert out is not None and not (out == 2).any() and np.count_nonzero(out) == np.count_nonzero(labels)


@pytest.mark.parametrize("bad", [-0.1, 1.0, True, "0.9", float("nan")])
def test_segmenter_rejects_a_bad_confidence(bad):
    from resunet_trt import Segmenter

    with pytest.raises(ValueError, match="min_lesion_confidence"):
        Segmenter(device="cpu", min_lesion_confidence=bad)


def test_sure_tumor_takes_a_cpu_torch_tensor_like_an_array():
    torch = pytest.importorskip("torch")
    logits = np.random.default_rng(5).standard_normal((2, 3, 9, 7)).astype(np.float32) * 5
    np.testing.assert_array_equal(sure_tumor(torch.from_numpy(logits), 1.0), sure_tumor(logits, 1.0))
