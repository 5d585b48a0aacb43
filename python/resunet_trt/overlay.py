"""PNG overlay of a segmentation for a quick visual check: axial, coronal and sagittal views side by side.

The three planes cross at the centroid of the largest lesion, or of the liver when there is no lesion (the
volume centre when there is neither). Liver is drawn in green and tumor in red over the windowed CT. Each view
is resampled to square pixels from the spacing, so anisotropic volumes keep their true proportions. Views
follow the radiological convention of the canonical grid: axial with anterior up and the patient's right on
the image's left; coronal and sagittal with superior up.

Pillow is imported only when an overlay is drawn.
"""

from __future__ import annotations

import io as _stdio
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .segmenter import Result

LIVER_RGB = (40, 200, 60)
TUMOR_RGB = (235, 40, 40)
DEFAULT_WINDOW = (-200.0, 250.0)


def crossing_point(
    labels: np.ndarray, lesions: Sequence[Any] = ()
) -> tuple[int, int, int]:
    """(d, h, w) voxel where the three views cross: largest lesion, else liver centroid, else the centre.

    Args:
        labels: uint8 (D, H, W).
        lesions: report lesions (objects or dicts with ``voxels`` and ``centroid_voxel``).
    """
    shape = labels.shape
    if len(lesions):
        def voxels(les: Any) -> int:
            return int(les["voxels"] if isinstance(les, dict) else les.voxels)

        big = max(lesions, key=voxels)
        c = big["centroid_voxel"] if isinstance(big, dict) else big.centroid_voxel
        centre = [float(v) for v in c]
    else:
        liver = labels >= 1
        n = int(np.count_nonzero(liver))
        if n:
            # Centroid from the per-axis marginals: three reductions, no index arrays of the whole mask.
            centre = []
            for axis in range(3):
                other = tuple(a for a in range(3) if a != axis)
                marginal = liver.sum(axis=other, dtype=np.int64)
                centre.append(float((marginal * np.arange(shape[axis])).sum() / n))
        else:
            centre = [(s - 1) / 2.0 for s in shape]
    return tuple(int(min(max(round(c), 0), s - 1)) for c, s in zip(centre, shape))  # type: ignore[return-value]


def _views(
    hu: np.ndarray, labels: np.ndarray, spacing: Sequence[float], at: tuple[int, int, int]
) -> list[tuple[str, np.ndarray, np.ndarray, float, float]]:
    """(name, ct plane, label plane, row spacing, column spacing) for the three views, display-oriented."""
    d, h, w = at
    dz, dy, dx = (float(s) for s in spacing)
    # D runs inferior -> superior: flip it so superior is at the top of coronal and sagittal views.
    return [
        ("axial", hu[d], labels[d], dy, dx),
        ("coronal", hu[::-1, h, :], labels[::-1, h, :], dz, dx),
        ("sagittal", hu[::-1, :, w], labels[::-1, :, w], dz, dy),
    ]


def render_overlay(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    lesions: Sequence[Any] = (),
    window: tuple[float, float] = DEFAULT_WINDOW,
    view_size: int = 384,
    alpha: float = 0.45,
) -> Any:
    """Draw the three views into one RGB ``PIL.Image``.

    Args:
        hu: CT (D, H, W) in HU, canonical grid.
        labels: uint8 (D, H, W), 0 background, 1 liver, 2 tumor.
        spacing: (dz, dy, dx) in mm.
        lesions: report lesions, to centre on the largest.
        window: (lo, hi) HU display window.
        view_size: longest side of each view in pixels.
        alpha: opacity of the label colours.

    Returns:
        PIL.Image.Image (RGB): a title strip, then the views side by side (each at most ``view_size``).

    Raises:
        ValueError: shapes differ, not 3D, or bad spacing/window.
    """
    from PIL import Image, ImageDraw

    if hu.ndim != 3 or hu.shape != labels.shape:
        raise ValueError(f"hu and labels must be (D, H, W) of one shape, got {hu.shape} and {labels.shape}")
    if len(spacing) != 3 or not all(float(s) > 0 for s in spacing):
        raise ValueError(f"spacing must be 3 positive numbers (dz, dy, dx), got {tuple(spacing)}")
    lo, hi = float(window[0]), float(window[1])
    if not lo < hi:
        raise ValueError(f"window must be (lo, hi) with lo < hi, got {window}")
    at = crossing_point(labels, lesions)
    panels = []
    for name, ct, lab, row_mm, col_mm in _views(hu, labels, spacing, at):
        rows, cols = ct.shape
        height_mm, width_mm = rows * row_mm, cols * col_mm
        scale = view_size / max(height_mm, width_mm)
        size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))  # PIL: (width, height)
        gray = np.clip((ct.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        gray_img = Image.fromarray(np.ascontiguousarray(gray)).resize(size, Image.Resampling.BILINEAR)
        lab_img = Image.fromarray(np.ascontiguousarray(lab.astype(np.uint8))).resize(size, Image.Resampling.NEAREST)
        rgb = np.repeat(np.asarray(gray_img, dtype=np.float32)[..., None], 3, axis=2)
        lab_arr = np.asarray(lab_img)
        for value, colour in ((1, LIVER_RGB), (2, TUMOR_RGB)):
            sel = lab_arr == value
            rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.asarray(colour, dtype=np.float32)
        panels.append((name, Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))))
    # Titles go in a strip above the views, so that a thin view (few slices) still shows its name.
    gap, title = 4, 14
    width = sum(p.width for _, p in panels) + gap * (len(panels) - 1)
    height = max(p.height for _, p in panels)
    canvas = Image.new("RGB", (width, height + title), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, p in panels:
        draw.text((x + 2, 1), name, fill=(255, 255, 0))
        canvas.paste(p, (x, title + (height - p.height) // 2))
        x += p.width + gap
    return canvas


def write_overlay(
    path: str | os.PathLike[str],
    result: Result,
    *,
    window: tuple[float, float] = DEFAULT_WINDOW,
    view_size: int = 384,
) -> None:
    """Render the overlay of a :class:`resunet_trt.segmenter.Result` and write it as PNG, atomically.

    Args:
        path: output .png file.
        result: the segmentation result (CT, labels, spacing and lesions come from it).
        window: (lo, hi) HU display window.
        view_size: longest side of each view in pixels.
    """
    image = render_overlay(
        result.volume.hu,
        result.labels,
        result.volume.spacing,
        lesions=result.lesions,
        window=window,
        view_size=view_size,
    )
    buf = _stdio.BytesIO()
    image.save(buf, format="PNG")
    from .io import atomic_write

    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
