#!/usr/bin/env python
"""Rebuild the gallery of real and synthetic liver tumors in docs/img (shown by docs/synthetic_tumors.md).

    python scripts/make_tumor_gallery.py [--out docs/img] [--seed 7] [--msd /path/to/msd_liver_2d]

Each PNG is a grid of axial tiles, CT windowed to -200..250 HU, every example twice: as it is, and with the
tumor contour (red) and the liver contour (green). Sources:

- real tumors: tests/data/lits117_roi128 (LiTS/MSD case 117, expert labels);
- synthetic tumors inserted into the tumor-free liver of lits117 (liver label only, real tumors kept out of it),
  into tests/data/totalseg_abdomen3mm (3 mm, no tumors), and into a 2.5D training stack (3 slices of 256x256 at
  1.5 mm, 5 mm apart) cut from lits117;
- with ``--msd``: MSD Task03 JPEG slices (8-bit, pixel = HU clipped to 0..255), synthetic tumors in their liver.

lits117 keeps no spacing in its header (it says 1 mm): the crop spans the whole liver in 128 voxels, so about
1.5 mm per voxel is assumed here.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resunet_trt import io as rio  # noqa: E402
from resunet_trt.io import atomic_write_bytes  # noqa: E402
from training.synthetic_tumors import TumorConfig, synthesize_tumors  # noqa: E402

WINDOW = (-200.0, 250.0)
TILE = 180
LITS117_SPACING = (1.5, 1.5, 1.5)
LIVER_RGB = np.array([60, 220, 80], dtype=np.float32)
TUMOR_RGB = np.array([255, 60, 60], dtype=np.float32)
REAL_RGB = np.array([255, 220, 0], dtype=np.float32)

Tiles = list[tuple[np.ndarray, np.ndarray]]
Page = tuple[Tiles, list[str]]


def _contour(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2-D mask (the mask minus its 4-neighbour erosion)."""
    m = np.pad(mask, 1)
    inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~inner


def _tile(hu: np.ndarray, liver: np.ndarray, tumor: np.ndarray, pixel_mm: tuple[float, float],
          window: tuple[float, float] = WINDOW, other: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(plain, contoured) RGB uint8 tiles (TILE, TILE, 3) of one axial slice, cropped around the liver.

    ``tumor`` is outlined in red, ``other`` (real tumors next to synthetic ones) in yellow.
    """
    rows, cols = np.nonzero(liver | tumor)
    if rows.size == 0:
        rows, cols = np.array([0, hu.shape[0] - 1]), np.array([0, hu.shape[1] - 1])
    # A square crop in mm around the liver, a little larger than it.
    cy = (rows.min() + rows.max()) / 2 * pixel_mm[0]
    cx = (cols.min() + cols.max()) / 2 * pixel_mm[1]
    half = 0.55 * max((rows.max() - rows.min() + 1) * pixel_mm[0], (cols.max() - cols.min() + 1) * pixel_mm[1], 80.0)
    y = cy - half + (np.arange(TILE) + 0.5) * (2 * half / TILE)
    x = cx - half + (np.arange(TILE) + 0.5) * (2 * half / TILE)
    # Pixel centres sit at (i + 0.5) * pixel_mm: bilinear for the image, nearest for the labels.
    fy = np.clip(y / pixel_mm[0] - 0.5, 0, hu.shape[0] - 1)
    fx = np.clip(x / pixel_mm[1] - 0.5, 0, hu.shape[1] - 1)
    ri, ci = np.round(fy).astype(int), np.round(fx).astype(int)
    outside = ((y < 0) | (y > hu.shape[0] * pixel_mm[0]))[:, None] | ((x < 0) | (x > hu.shape[1] * pixel_mm[1]))[None, :]
    lo, hi = window
    gray = np.clip((hu.astype(np.float32) - lo) * (255.0 / (hi - lo)), 0, 255)
    y0 = np.minimum(np.floor(fy).astype(int), hu.shape[0] - 2) if hu.shape[0] > 1 else np.zeros(TILE, int)
    x0 = np.minimum(np.floor(fx).astype(int), hu.shape[1] - 2) if hu.shape[1] > 1 else np.zeros(TILE, int)
    wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
    y1, x1 = np.minimum(y0 + 1, hu.shape[0] - 1), np.minimum(x0 + 1, hu.shape[1] - 1)
    shown = ((gray[y0][:, x0] * (1 - wx) + gray[y0][:, x1] * wx) * (1 - wy)
             + (gray[y1][:, x0] * (1 - wx) + gray[y1][:, x1] * wx) * wy)
    shown = np.where(outside, 0.0, shown)
    plain = np.repeat(shown[..., None], 3, axis=2)
    lab_liver = liver[ri][:, ci] & ~outside
    lab_tumor = tumor[ri][:, ci] & ~outside
    marked = plain.copy()
    marked[_contour(lab_liver | lab_tumor)] = LIVER_RGB
    if other is not None:
        marked[_contour(other[ri][:, ci] & ~outside)] = REAL_RGB
    marked[_contour(lab_tumor)] = TUMOR_RGB
    return plain.astype(np.uint8), marked.astype(np.uint8)


def _grid(tiles: Tiles, titles: list[str], per_row: int = 4) -> bytes:
    """PNG bytes: pairs (plain above contoured), ``per_row`` pairs a row, a title over each pair."""
    from PIL import Image, ImageDraw

    gap, head = 4, 14
    n_rows = (len(tiles) + per_row - 1) // per_row
    width = per_row * TILE + (per_row - 1) * gap
    height = n_rows * (head + 2 * TILE + gap) - gap
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, ((plain, marked), title) in enumerate(zip(tiles, titles)):
        x = (i % per_row) * (TILE + gap)
        y = (i // per_row) * (head + 2 * TILE + gap)
        draw.text((x + 2, y + 1), title, fill=(255, 255, 0))
        canvas.paste(Image.fromarray(plain), (x, y + head))
        canvas.paste(Image.fromarray(marked), (x, y + head + TILE))
    # A fixed palette: 128 grey levels and the exact contour and text colours (an adaptive one drifts the few
    # contour pixels towards other colours). Half the grey levels keep the PNGs small enough for the docs.
    colours = [(v, v, v) for v in np.linspace(0, 255, 128).round().astype(int)]
    colours += [tuple(int(c) for c in rgb) for rgb in (LIVER_RGB, TUMOR_RGB, REAL_RGB)] + [(255, 255, 0)]
    palette = Image.new("P", (1, 1))
    flat = [c for rgb in colours for c in rgb]
    palette.putpalette(flat + flat[-3:] * (256 - len(colours)))
    buf = io.BytesIO()
    canvas.quantize(palette=palette, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _largest_slices(mask: np.ndarray, n: int, min_gap: int = 6) -> list[int]:
    """Up to n slice indices with the most mask voxels, at least ``min_gap`` apart."""
    area = mask.sum(axis=(1, 2))
    picked: list[int] = []
    for d in np.argsort(-area, kind="stable"):
        if area[d] == 0 or len(picked) == n:
            break
        if all(abs(int(d) - p) >= min_gap for p in picked):
            picked.append(int(d))
    return sorted(picked)


def _lesion_slices(result, n: int) -> list[int]:
    """Slices through the middle of the largest lesions placed (one per lesion)."""
    order = sorted(result.tumors, key=lambda t: -t.voxels)
    picked: list[int] = []
    for t in order:
        d = int(round(t.centre[0]))
        d = min(max(d, 0), result.mask.shape[0] - 1)
        if not result.mask[d].any():
            d = int(np.argmax(result.mask.sum(axis=(1, 2))))
        if t.voxels and d not in picked:
            picked.append(d)
        if len(picked) == n:
            break
    return picked


def real_lits117(n: int = 6) -> Page:
    ct = rio.load_ct(ROOT / "tests/data/lits117_roi128/ct.nii.gz")
    lab = rio.load_label(ROOT / "tests/data/lits117_roi128/label.nii.gz", ct)
    tiles: Tiles = []
    titles: list[str] = []
    for d in _largest_slices(lab == 2, n, min_gap=10):
        tiles.append(_tile(ct.hu[d], lab[d] == 1, lab[d] == 2, LITS117_SPACING[1:]))
        titles.append(f"real, lits117 slice {d}")
    return tiles, titles


def synthetic_lits117(rng: np.random.Generator, config: TumorConfig, n: int = 6) -> Page:
    ct = rio.load_ct(ROOT / "tests/data/lits117_roi128/ct.nii.gz")
    lab = rio.load_label(ROOT / "tests/data/lits117_roi128/label.nii.gz", ct)
    liver = lab == 1
    res = synthesize_tumors(ct.hu, liver, LITS117_SPACING, rng, config)
    tiles: Tiles = []
    titles: list[str] = []
    for d in _lesion_slices(res, n):
        # Synthetic tumors in red, the case's real ones in yellow.
        tiles.append(_tile(res.hu[d], lab[d] >= 1, res.mask[d], LITS117_SPACING[1:], other=lab[d] == 2))
        titles.append(f"synthetic, lits117 slice {d}")
    return tiles, titles


def synthetic_totalseg(rng: np.random.Generator, config: TumorConfig, n: int = 6) -> Page:
    ct = rio.load_ct(ROOT / "tests/data/totalseg_abdomen3mm/ct.nii.gz")
    liver = rio.load_label(ROOT / "tests/data/totalseg_abdomen3mm/liver_pseudolabel.nii.gz", ct) == 1
    tiles: Tiles = []
    titles: list[str] = []
    for _ in range(10):
        res = synthesize_tumors(ct.hu, liver, ct.spacing, rng, config)
        for d in _lesion_slices(res, 2):
            if len(tiles) < n:
                tiles.append(_tile(res.hu[d], liver[d], res.mask[d], ct.spacing[1:]))
                titles.append(f"synthetic, totalseg 3 mm, slice {d}")
    return tiles, titles


def synthetic_stacks(rng: np.random.Generator, config: TumorConfig, n: int = 4) -> Page:
    """2.5D training samples: 3 slices of 256x256 at 1.5 mm, 5 mm apart, as the training sampler cuts them."""
    from PIL import Image

    ct = rio.load_ct(ROOT / "tests/data/lits117_roi128/ct.nii.gz")
    lab = rio.load_label(ROOT / "tests/data/lits117_roi128/label.nii.gz", ct)
    tiles: Tiles = []
    titles: list[str] = []
    tries = 0
    while len(tiles) < 3 * n and tries < 50:
        tries += 1
        centre = int(rng.integers(20, 108))
        picks = [centre - 3, centre, centre + 3]  # ~4.5 mm apart at the assumed 1.5 mm
        hu = np.stack([np.asarray(Image.fromarray(ct.hu[d].astype(np.float32), mode="F")
                                  .resize((256, 256), Image.Resampling.BILINEAR)) for d in picks])
        labels = np.stack([np.asarray(Image.fromarray(lab[d]).resize((256, 256), Image.Resampling.NEAREST))
                           for d in picks])
        res = synthesize_tumors(hu, labels == 1, (4.5, 0.75, 0.75), rng, config)
        if not res.mask.any():
            continue
        for k in range(3):
            tiles.append(_tile(res.hu[k], labels[k] >= 1, res.mask[k], (0.75, 0.75)))
            titles.append(f"2.5D stack @{centre}, channel {k}")
    return tiles, titles


def synthetic_msd(folder: Path, rng: np.random.Generator, config: TumorConfig, n: int = 6) -> Page:
    """MSD Task03 JPEG slices: pixel = HU clipped to 0..255, so the window here is 0..255 HU."""
    from PIL import Image

    names = sorted(p.name for p in (folder / "images").glob("*.jpg"))
    tiles: Tiles = []
    titles: list[str] = []
    for name in rng.permutation(names):
        if len(tiles) == n:
            break
        img = np.asarray(Image.open(folder / "images" / name).convert("L"), dtype=np.float32)
        mask_path = folder / "masks" / name
        if not mask_path.exists():
            continue
        liver = np.asarray(Image.open(mask_path).convert("L")) > 127
        if liver.sum() < 3000:
            continue
        res = synthesize_tumors(img[None], liver[None], (5.0, 1.5, 1.5), rng, config)
        if not res.mask.any():
            continue
        hu = np.clip(res.hu[0], 0, 255)
        tiles.append(_tile(hu, liver, res.mask[0], (1.5, 1.5), window=(0.0, 255.0)))
        titles.append(f"synthetic, MSD {Path(name).stem[-9:]}")
    return tiles, titles


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--msd", type=Path, default=None, help="msd_liver_2d folder (images/, masks/)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    config = TumorConfig(probability=1.0, count=(2, 5), diameter_mm=(5.0, 60.0))
    pages = {
        "tumors_real_lits117.png": real_lits117(),
        "tumors_synthetic_lits117.png": synthetic_lits117(rng, TumorConfig(probability=1.0, count=(6, 8))),
        "tumors_synthetic_totalseg.png": synthetic_totalseg(rng, config),
        "tumors_synthetic_stack.png": synthetic_stacks(
            rng, TumorConfig(probability=1.0, count=(1, 3), diameter_mm=(10.0, 50.0)), n=2
        ),
    }
    if args.msd is not None:
        pages["tumors_synthetic_msd.png"] = synthetic_msd(args.msd, rng, TumorConfig(probability=1.0, count=(1, 3)))
    for name, (tiles, titles) in pages.items():
        if not tiles:
            print(f"{name}: nothing to show, skipped")
            continue
        data = _grid(tiles, titles, per_row=3)
        path = atomic_write_bytes(args.out / name, data)
        print(f"{path}: {len(tiles)} examples, {len(data) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
