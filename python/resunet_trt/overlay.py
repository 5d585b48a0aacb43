"""PNG overlay of a segmentation for a quick visual check: axial, coronal and sagittal views side by side.

The three planes cross at the centroid of the largest lesion, or of the liver when there is no lesion (the
volume centre when there is neither). Liver is drawn in green and tumor in red over the windowed CT. Each view
is resampled to square pixels from the spacing, so anisotropic volumes keep their true proportions. Views
follow the radiological convention of the canonical grid: axial with anterior up and the patient's right on
the image's left; coronal and sagittal with superior up.

When the stack is too thin for a useful coronal or sagittal view (a few slices: at true proportions they are
strips a few pixels high), three axial slices are shown instead.

Each view is annotated like a viewer's screen: its name and slice number above it ("axial 17/33": slice 17 of 33,
counted from the inferior end; coronal slices from anterior, sagittal from the patient's right), orientation
letters at its edges (R/L, A/P, S/I), a scale bar in mm; the first view also carries the case name and a colour
legend.

Pillow is imported only when an overlay is drawn.
"""

from __future__ import annotations

import io as _stdio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .results import Result

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


# Edge letters of each view: (top, bottom, left, right). Canonical grid: D inferior->superior (flipped for
# display), H anterior->posterior, W patient right->left.
_AXIAL_LETTERS = ("A", "P", "R", "L")
_CORONAL_LETTERS = ("S", "I", "R", "L")
_SAGITTAL_LETTERS = ("S", "I", "A", "P")

# A stack thinner than this share of its plane's extent gets three axial views instead of coronal and sagittal.
THIN_STACK_RATIO = 0.25


@dataclass(frozen=True)
class OverlayView:
    """One panel of the overlay.

    Attributes:
        title: view name and slice number, 1-based ("axial 17/33").
        ct: HU plane (rows, cols), display-oriented.
        labels: label plane (rows, cols), display-oriented.
        row_mm: pixel height in mm.
        col_mm: pixel width in mm.
        letters: patient directions at the (top, bottom, left, right) edges, e.g. ("A", "P", "R", "L").
    """

    title: str
    ct: np.ndarray
    labels: np.ndarray
    row_mm: float
    col_mm: float
    letters: tuple[str, str, str, str]


def overlay_views(
    hu: np.ndarray, labels: np.ndarray, spacing: Sequence[float], at: tuple[int, int, int]
) -> list[OverlayView]:
    """The views to draw: axial, coronal and sagittal through voxel ``at`` (d, h, w), or three axial slices
    (first, ``at``'s and last) when the stack is thinner than :data:`THIN_STACK_RATIO` of its plane.

    Args:
        hu: CT (D, H, W), canonical grid.
        labels: (D, H, W).
        spacing: (dz, dy, dx) in mm.
        at: (d, h, w) where the planes cross.
    """
    d, h, w = at
    n_d, n_h, n_w = hu.shape
    dz, dy, dx = (float(s) for s in spacing)
    if n_d * dz < THIN_STACK_RATIO * max(n_h * dy, n_w * dx):
        picks = sorted({0, d, n_d - 1})
        if len(picks) < 3 and n_d >= 3:
            picks = sorted({*picks, (n_d - 1) // 2})
        return [OverlayView(f"axial {k + 1}/{n_d}", hu[k], labels[k], dy, dx, _AXIAL_LETTERS) for k in picks]
    # D runs inferior -> superior: flip it so superior is at the top of coronal and sagittal views.
    return [
        OverlayView(f"axial {d + 1}/{n_d}", hu[d], labels[d], dy, dx, _AXIAL_LETTERS),
        OverlayView(f"coronal {h + 1}/{n_h}", hu[::-1, h, :], labels[::-1, h, :], dz, dx, _CORONAL_LETTERS),
        OverlayView(f"sagittal {w + 1}/{n_w}", hu[::-1, :, w], labels[::-1, :, w], dz, dy, _SAGITTAL_LETTERS),
    ]


def scale_bar_mm(width_mm: float) -> float:
    """A round bar length (1, 2 or 5 times a power of ten, in mm) of at most a quarter of ``width_mm``."""
    target = max(width_mm / 4.0, 1e-6)
    power = 10.0 ** np.floor(np.log10(target))
    return float(max(m * power for m in (1.0, 2.0, 5.0) if m * power <= target))


def render_overlay(
    hu: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    lesions: Sequence[Any] = (),
    window: tuple[float, float] = DEFAULT_WINDOW,
    view_size: int = 384,
    alpha: float = 0.45,
    case: str | None = None,
) -> Any:
    """Draw the views (see the module docstring) into one RGB ``PIL.Image``.

    Args:
        hu: CT (D, H, W) in HU, canonical grid.
        labels: uint8 (D, H, W), 0 background, 1 liver, 2 tumor.
        spacing: (dz, dy, dx) in mm.
        lesions: report lesions, to centre on the largest.
        window: (lo, hi) HU display window.
        view_size: longest side of each view in pixels.
        alpha: opacity of the label colours.
        case: case name written on the first view (none when None).

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
    for view in overlay_views(hu, labels, spacing, at):
        rows, cols = view.ct.shape
        height_mm, width_mm = rows * view.row_mm, cols * view.col_mm
        scale = view_size / max(height_mm, width_mm)
        size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))  # PIL: (width, height)
        gray = np.clip((view.ct.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
        gray_img = Image.fromarray(np.ascontiguousarray(gray)).resize(size, Image.Resampling.BILINEAR)
        lab_img = Image.fromarray(np.ascontiguousarray(view.labels.astype(np.uint8))).resize(
            size, Image.Resampling.NEAREST
        )
        rgb = np.repeat(np.asarray(gray_img, dtype=np.float32)[..., None], 3, axis=2)
        lab_arr = np.asarray(lab_img)
        for value, colour in ((1, LIVER_RGB), (2, TUMOR_RGB)):
            sel = lab_arr == value
            rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.asarray(colour, dtype=np.float32)
        panel = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8))
        panels.append((view, panel, size[0] / width_mm))  # (view, image, pixels per mm)
    # Titles go in a strip above the views, so that a thin view still shows its name and slice number.
    gap, title = 4, 14
    width = sum(p.width for _, p, _ in panels) + gap * (len(panels) - 1)
    height = max(p.height for _, p, _ in panels)
    canvas = Image.new("RGB", (width, height + title), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    font = _font()
    x = 0
    for i, (view, p, px_per_mm) in enumerate(panels):
        draw.text((x + 2, 1), view.title, fill=(255, 255, 0), font=font)
        y = title + (height - p.height) // 2
        canvas.paste(p, (x, y))
        _annotate_panel(draw, font, (x, y, p.width, p.height), view.letters, px_per_mm,
                        legend=i == 0, case=case if i == 0 else None)
        x += p.width + gap
    return canvas


_TEXT = (255, 255, 0)
_OUTLINE = (0, 0, 0)


def _font() -> Any:
    """Pillow's built-in font at 11 px (a FreeType font when Pillow has FreeType, else its bitmap font)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=11)
    except (TypeError, ValueError):  # pragma: no cover - Pillow without FreeType has one fixed size
        return ImageFont.load_default()


def _annotate_panel(
    draw: Any,
    font: Any,
    box: tuple[int, int, int, int],
    letters: tuple[str, str, str, str],
    px_per_mm: float,
    *,
    legend: bool,
    case: str | None,
) -> None:
    """Orientation letters at the edge midpoints, a scale bar bottom right; legend bottom left and case name top
    left when asked. What does not fit the panel is left out (a tiny panel keeps its letters only)."""
    x, y, w, h = box
    text = {"fill": _TEXT, "font": font, "stroke_width": 1, "stroke_fill": _OUTLINE}

    def size(s: str) -> tuple[int, int]:
        left, top, right, bottom = draw.textbbox((0, 0), s, font=font, stroke_width=1)
        return right - left, bottom - top

    top, bottom, left, right = letters
    lw, lh = size("M")
    draw.text((x + (w - size(top)[0]) // 2, y + 1), top, **text)
    draw.text((x + (w - size(bottom)[0]) // 2, y + h - lh - 2), bottom, **text)
    draw.text((x + 2, y + (h - lh) // 2), left, **text)
    draw.text((x + w - size(right)[0] - 2, y + (h - lh) // 2), right, **text)
    if h < 3 * lh + 8:
        return
    # scale bar, bottom right, a round length of about a quarter of the panel
    bar_mm = scale_bar_mm(w / px_per_mm)
    bar_px = max(1, round(bar_mm * px_per_mm))
    label = f"{bar_mm:g} mm"
    tw, th = size(label)
    if max(bar_px, tw) + 8 <= w // 2:
        bx1, by = x + w - 4, y + h - 4
        bx0 = bx1 - bar_px
        draw.rectangle((bx0 - 1, by - 4, bx1 + 1, by), fill=_OUTLINE)
        draw.rectangle((bx0, by - 3, bx1, by - 1), fill=(255, 255, 255))
        draw.text((bx1 - tw, by - 6 - th), label, **text)
    if legend:
        entries = [("liver", LIVER_RGB), ("tumor", TUMOR_RGB)]
        sw = lh
        ly = y + h - 4 - len(entries) * (lh + 3)
        if sw + 4 + size("tumor")[0] + 8 <= w // 2 and ly > y + 2 * lh:
            for name, colour in entries:
                draw.rectangle((x + 4, ly, x + 4 + sw - 1, ly + sw - 1), fill=colour, outline=(255, 255, 255))
                draw.text((x + 8 + sw, ly - 1), name, **text)
                ly += lh + 3
    if case:
        room = w // 2 - size(top)[0] // 2 - 8  # left of the top letter
        name = case
        while name and size(name)[0] > room:
            name = name[:-2] + "…" if len(name) > 2 else ""
        if name:
            draw.text((x + 2, y + 1), name, **text)


def write_overlay(
    path: str | os.PathLike[str],
    result: Result,
    *,
    window: tuple[float, float] = DEFAULT_WINDOW,
    view_size: int = 384,
    case: str | None = None,
) -> None:
    """Render the overlay of a :class:`resunet_trt.results.Result` and write it as PNG, atomically.

    Args:
        path: output .png file.
        result: the segmentation result (CT, labels, spacing and lesions come from it).
        window: (lo, hi) HU display window.
        view_size: longest side of each view in pixels.
        case: case name drawn on the image; None: the name of the file or folder the CT was read from.
    """
    if case is None and result.volume.source:
        case = Path(result.volume.source).name
    image = render_overlay(
        result.volume.hu,
        result.labels,
        result.volume.spacing,
        lesions=result.lesions,
        window=window,
        view_size=view_size,
        case=case,
    )
    buf = _stdio.BytesIO()
    image.save(buf, format="PNG")
    from .files import atomic_write

    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
