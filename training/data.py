"""Training data: case loading and validation, case-level split, preprocessing cache and slice sampling.

Cases are found by :mod:`resunet_trt.datasets` (its names are importable from here too). A *case* is one CT
volume with its label volume. Three layouts are read:

* LiTS: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` in one folder;
* MSD Task03: ``imagesTr/liver_N.nii.gz`` with ``labelsTr/liver_N.nii.gz``;
* a CSV (or plain list) of ``image,label[,kind]`` lines, paths relative to the file; ``kind`` is ``full``
  (0 background, 1 liver, 2 tumor, the default) or ``liver_only`` (0/1 liver masks, tumor not annotated).

A folder holding ``ct.nii.gz`` with ``label.nii.gz`` (one case, as in tests/data) is read as well, and so is a
folder of 2D slices (``images/*.jpg`` with ``masks/*.jpg``, 8-bit pixel = HU clipped to 0..255, liver and tumor
merged, as in the MSD liver slice sets): one liver-only case whose slices are segmented one at a time.

A case list may also say, per case, what a plain label file cannot: ``label_map`` (``"5:1"``: an organ map's liver
value becomes liver, everything else background), ``spacing`` (``"1.4 1.4 1.4"``: a header known to be wrong),
``slices`` (``"42:51"``: only these canonical slices, e.g. a thorax without liver), ``weight`` (sampling weight of
each of its slices) and the kind ``negative`` (no label file: every voxel is background, e.g. thorax slices above
the liver, where the heart must not be called liver), and for a slice set ``fold`` (``"0/5"``: only the
patients whose number is 0 modulo 5; ``"!0/5"``: all the others), which holds patients out of training, and
``zero_hu`` (``"-1000:-100"``: the HU that the set's clipped zeros get outside the body and inside it).

Volumes come through ``resunet_trt.io.load_ct``/``load_label`` in the canonical (D, H, W) orientation, and every
case is turned into network input by ``resunet_trt.kernels.preprocess`` — the op that inference runs — once, at
the start of training (the result is cached per case). Augmentation then works on 2D (K, h, w) samples.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from resunet_trt.datasets import (
    CASE_LIST_COLUMNS,
    LABEL_KINDS,
    CaseSpec,
    find_cases,
    find_lits,
    find_msd,
    is_slice_set,
    read_case_list,
    slice_set_case,
)

logger = logging.getLogger(__name__)

SLICE_SET_SPACING = (3.0, 1.6, 1.6)  # assumed (dz, dy, dx) of 256x256 slice sets (512-pixel CT at ~0.8 mm, halved)


@dataclass
class Case:
    """One loaded case.

    Attributes:
        name: case id.
        hu: int16 (D, H, W) Hounsfield units, canonical orientation.
        labels: uint8 (D, H, W); for ``liver_only`` cases 0/1.
        kind: label kind (see :class:`CaseSpec`).
        spacing: (dz, dy, dx) in mm.
        weight: sampling weight of each slice.
        slice_set: the slices are unrelated 2D images (no neighbours: each is its own context).
    """

    name: str
    hu: np.ndarray
    labels: np.ndarray
    kind: str = "full"
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    weight: float = 1.0
    slice_set: bool = False


# Each file-name prefix of the MSD slice sets stores the slices turned one way; np.rot90 turns them back to the
# canonical view (anterior up, the patient's right on the image's left). Checked by eye on every prefix.
_SLICE_SET_ROTATIONS = {"flipped": 1, "mirrored": -1}


def slice_patient(file_name: str) -> int:
    """The patient number of a slice-set file, ``<orientation>_<patient>_<slice>.jpg``."""
    parts = file_name.split("_")
    if len(parts) < 3 or not parts[1].isdigit():
        raise ValueError(f"{file_name}: expected <orientation>_<patient number>_<slice> in a slice-set file name")
    return int(parts[1])


def body_mask(pixels: np.ndarray) -> np.ndarray:
    """The body of an 8-bit slice (pixel = HU clipped to 0..255): pixels above 5, closed over ~1 cm, holes filled,
    largest component."""
    from scipy import ndimage

    pad = 7  # the closing reaches 6 pixels: padded, so that a body touching the image edge is not eroded there
    mask = np.pad(pixels > 5, pad)
    mask = ndimage.binary_closing(mask, structure=np.ones((7, 7), bool), iterations=2)[pad:-pad, pad:-pad]
    mask = ndimage.binary_fill_holes(mask)
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == 1 + int(np.argmax(sizes))


def unclip_zeros(pixels: np.ndarray, outside: int, inside: int) -> np.ndarray:
    """int16 HU of an 8-bit slice whose HU were clipped at 0: pixels of 0-2 (0 and JPEG noise) become ``outside``
    beyond the body and ``inside`` within it (air and fat, which clipping made water); the rest keep their value."""
    hu = pixels.astype(np.int16)
    body = body_mask(pixels)
    hu[~body] = outside
    hu[body & (pixels <= 2)] = inside
    return hu


def slice_set_files(spec: CaseSpec) -> list[Path]:
    """The image files of a slice set that :func:`load_slice_set` stacks, in its order (``spec.fold`` applied)."""
    folder = Path(spec.image)
    files = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise ValueError(f"{folder}/images: no .jpg or .png slices")
    if spec.fold is not None:
        k, n, keep = spec.fold
        files = [f for f in files if (slice_patient(f.name) % n == k) == keep]
        if not files:
            raise ValueError(f"{folder}: fold {spec.fold} selects none of its slices")
    return files


def load_slice_set(spec: CaseSpec) -> Case:
    """Read a folder of 2D slices: pixel value = HU clipped to 0..255, mask > 127 = liver (or tumor).

    Slices are turned to the canonical view by their file-name prefix (files of an unknown prefix are an error,
    not guessed), stacked as unrelated slices of one case. ``spec.fold`` keeps or leaves out one patient fold
    (:func:`slice_patient` modulo n), so that a model can be scored on patients it never saw; ``spec.zero_hu``
    gives the clipped zeros back a CT's air and fat (:func:`unclip_zeros`).
    """
    from PIL import Image

    folder = Path(spec.image)
    files = slice_set_files(spec)
    hu, labels = [], []
    for f in files:
        prefix = f.name.split("_", 1)[0]
        if prefix not in _SLICE_SET_ROTATIONS:
            raise ValueError(f"{f}: unknown slice orientation prefix {prefix!r} (known: {sorted(_SLICE_SET_ROTATIONS)})")
        mask_file = folder / "masks" / f.name
        if not mask_file.is_file():
            raise ValueError(f"no mask for slice {f} (expected {mask_file})")
        image = np.asarray(Image.open(f).convert("L"))
        mask = np.asarray(Image.open(mask_file).convert("L"))
        if image.shape != mask.shape:
            raise ValueError(f"{mask_file}: shape {mask.shape} differs from its slice's {image.shape}")
        k = _SLICE_SET_ROTATIONS[prefix]
        hu.append(np.rot90(image if spec.zero_hu is None else unclip_zeros(image, *spec.zero_hu), k).astype(np.int16))
        labels.append(np.rot90(mask > 127, k).astype(np.uint8))
    shapes = {a.shape for a in hu}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: slices of different sizes {sorted(shapes)}")
    return Case(
        name=spec.name, hu=np.ascontiguousarray(np.stack(hu)), labels=np.ascontiguousarray(np.stack(labels)),
        kind="liver_only", spacing=spec.spacing or SLICE_SET_SPACING, weight=spec.weight, slice_set=True,
    )


def load_case(spec: CaseSpec) -> Case:
    """Load and check one case; ValueError naming the file on any problem.

    Checks (through ``resunet_trt.io``): the image is a 3D CT, the label exists, has the image's on-disk shape
    and affine, and holds only 0/1/2 after ``label_map`` (for ``liver_only`` cases a 2 is taken as liver).
    ``spacing`` and ``slices`` of the spec are applied last.
    """
    from resunet_trt import io as rio

    if spec.slice_set:
        return load_slice_set(spec)
    if not Path(spec.image).exists():
        raise ValueError(f"image file not found: {spec.image}")
    if spec.label is not None and not Path(spec.label).exists():
        raise ValueError(f"no label file for image {spec.image}: {spec.label} does not exist")
    try:
        vol = rio.load_ct(spec.image)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{spec.image}: cannot be read as a 3D CT volume ({exc})") from exc
    if vol.hu.ndim != 3:
        raise ValueError(f"{spec.image}: expected a 3D image, got shape {vol.hu.shape}")
    if spec.label is None:
        labels = np.zeros(vol.hu.shape, np.uint8)
    else:
        try:
            labels = rio.load_label(spec.label, vol, max_value=255 if spec.label_map is not None else 2)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{spec.label}: label does not match image {spec.image} ({exc})") from exc
    if labels.shape != vol.hu.shape:
        raise ValueError(f"{spec.label}: label shape {labels.shape} differs from image shape {vol.hu.shape}")
    if spec.label_map is not None:
        lut = np.zeros(max(int(labels.max()), max(v for v, _ in spec.label_map)) + 1, np.uint8)
        for value, cls in spec.label_map:
            lut[value] = cls
        labels = lut[labels]
    values = np.unique(labels)
    bad = [int(v) for v in values if v not in (0, 1, 2)]
    if bad:
        raise ValueError(f"{spec.label}: label values must be in {{0, 1, 2}}, found {bad}")
    if spec.kind == "liver_only":
        labels = (labels > 0).astype(np.uint8)
    hu = vol.hu
    if spec.slices is not None:
        start, stop = spec.slices[0], min(spec.slices[1], hu.shape[0])
        if start >= stop:
            raise ValueError(f"{spec.image}: slices {spec.slices} select nothing of its {hu.shape[0]} slices")
        hu, labels = hu[start:stop], labels[start:stop]
    return Case(
        name=spec.name,
        hu=np.ascontiguousarray(hu),
        labels=np.ascontiguousarray(labels, dtype=np.uint8),
        kind=spec.kind,
        spacing=spec.spacing or tuple(float(s) for s in vol.spacing),  # type: ignore[arg-type]
        weight=spec.weight,
    )


def split_cases(
    names: Sequence[str], *, val_fraction: float = 0.2, seed: int = 0, val_names: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Split by case (never by slice), reproducibly from ``seed``.

    Args:
        names: case ids.
        val_fraction: share of cases for validation (rounded, at least one when > 0 and there are >= 2 cases).
        seed: shuffling seed.
        val_names: cases forced into validation (the rest of the quota is drawn at random).

    Returns:
        (train names, validation names), each in the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError("case names must be unique")
    forced = [n for n in val_names]
    unknown = [n for n in forced if n not in names]
    if unknown:
        raise ValueError(f"val_cases {unknown} are not among the cases {names}")
    n_val = round(val_fraction * len(names))
    if val_fraction > 0 and n_val == 0 and len(names) >= 2:
        n_val = 1
    n_val = max(n_val, len(forced))
    rest = [n for n in names if n not in forced]
    order = np.random.default_rng(seed).permutation(len(rest))
    chosen = set(forced) | {rest[i] for i in order[: n_val - len(forced)]}
    if len(chosen) >= len(names) and names:
        raise ValueError(f"the split leaves no training case ({len(names)} cases, {len(chosen)} for validation)")
    return [n for n in names if n not in chosen], [n for n in names if n in chosen]


def resize_labels_nearest(
    labels: np.ndarray,
    out_size: tuple[int, int],
    *,
    step: tuple[float, float] | None = None,
    origin: tuple[float, float] | None = None,
) -> np.ndarray:
    """Nearest-neighbour resampling of the plane of (D, H, W) labels to (D, h, w).

    Uses the mapping of the image resampling (``kernels.preprocess``): output pixel ``y`` sits at input coordinate
    ``(y + 0.5) * step + origin - 0.5`` (default ``step = H / h``, ``origin = 0``: the whole plane), so labels land on
    the pixels the image lands on. Pixels outside the input plane are background.
    """
    _, hh, ww = labels.shape
    oh, ow = out_size
    sy, sx = step if step is not None else (hh / oh, ww / ow)
    oy, ox = origin if origin is not None else (0.0, 0.0)

    def taps(n_out: int, n_in: int, st: float, org: float) -> tuple[np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * st + org  # input coordinate + 0.5
        inside = (pos >= 0.0) & (pos <= n_in)
        return np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1), inside

    rows, rin = taps(oh, hh, sy, oy)
    cols, cin = taps(ow, ww, sx, ox)
    out = labels[:, rows][:, :, cols]
    if not (rin.all() and cin.all()):
        out = out * (rin[:, None] & cin[None, :])[None].astype(out.dtype)
    return np.ascontiguousarray(out)


@dataclass(frozen=True)
class Sampling:
    """How a case is turned into network input: the preprocessing that inference also does.

    Attributes:
        window: (lo, hi) HU window.
        plane_size: (h, w) of the network plane (the minimum, when ``pixel_mm`` is set).
        context: K slices as channels.
        pixel_mm: in-plane mm per network pixel, or None to resize the whole plane to ``plane_size``.
        slice_mm: mm between context slices, or None for neighbouring slices.
        divisor: the plane must be a multiple of this (``2**depth`` of the network).
        dtype: cache dtype, ``"float16"`` or ``"float32"``.
    """

    window: tuple[float, float]
    plane_size: tuple[int, int]
    context: int
    pixel_mm: float | None = None
    slice_mm: float | None = None
    divisor: int = 32
    dtype: str = "float16"


@dataclass
class PreparedCase:
    """A case turned into network input once: ``x`` (D, K, h, w), ``y`` (D, h, w) on the network plane, and the
    original labels for full-resolution validation.

    ``step``/``origin`` are the in-plane mapping used (what decoding the logits back needs), ``pixel_mm`` the (dy, dx)
    size of a network pixel and ``slice_mm`` the distance between context channels, in mm (for synthetic tumors).
    """

    name: str
    kind: str
    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    liver_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tumor_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    weight: float = 1.0
    step: tuple[float, float] | None = None
    origin: tuple[float, float] | None = None
    pixel_mm: tuple[float, float] = (1.0, 1.0)
    slice_mm: float = 1.0


def prepare_case(case: Case, sampling: Sampling | None = None, **fields_: Any) -> PreparedCase:
    """Preprocess a whole case once (the op inference runs, with the same physical sampling) and index its
    liver/tumor slices. A slice set is preprocessed slice by slice (each slice is its own context).

    Args:
        case: the loaded case.
        sampling: how to preprocess; or give :class:`Sampling`'s fields as keywords instead.
    """
    from resunet_trt import kernels

    if sampling is None:
        sampling = Sampling(**fields_)
    elif fields_:
        raise TypeError("give either sampling or its fields as keywords, not both")

    hu = case.hu
    dz, dy, dx = case.spacing
    if sampling.pixel_mm is not None:
        mapping = kernels.plane_mapping(
            hu.shape[1:], (dy, dx), sampling.pixel_mm, min_size=min(sampling.plane_size), divisor=sampling.divisor
        )
        out_size, step, origin = tuple(mapping.out_size), tuple(mapping.step), tuple(mapping.origin)
    else:
        out_size, step, origin = tuple(sampling.plane_size), None, None
    slice_step = 1.0 if sampling.slice_mm is None or case.slice_set else sampling.slice_mm / dz
    common = {"window": tuple(sampling.window), "out_size": out_size, "dtype": sampling.dtype}
    if step is not None:
        common.update(step=step, origin=origin)
    if case.slice_set:
        x = np.asarray(kernels.preprocess(hu, context=1, **common))
        x = np.ascontiguousarray(np.repeat(x, sampling.context, axis=1))
    else:
        x = np.asarray(kernels.preprocess(hu, context=sampling.context, slice_step=slice_step, **common))
    y = resize_labels_nearest(case.labels, out_size, step=step, origin=origin)  # type: ignore[arg-type]
    per_slice = case.labels.reshape(case.labels.shape[0], -1)
    liver = np.flatnonzero((per_slice >= 1).any(axis=1))
    tumor = np.flatnonzero((per_slice == 2).any(axis=1)) if case.kind == "full" else np.zeros(0, np.int64)
    hh, ww = hu.shape[1:]
    pix = (step[0] * dy, step[1] * dx) if step is not None else (dy * hh / out_size[0], dx * ww / out_size[1])
    return PreparedCase(
        case.name, case.kind, x, y, case.labels, liver, tumor, weight=case.weight, step=step, origin=origin,
        pixel_mm=(float(pix[0]), float(pix[1])),
        slice_mm=float(sampling.slice_mm if sampling.slice_mm is not None else dz),
    )


@dataclass(frozen=True)
class SamplingConfig:
    """How slices are drawn each epoch.

    Attributes:
        samples_per_epoch: slices per epoch (over all training cases).
        tumor_fraction: share drawn from slices that contain tumor.
        liver_fraction: share drawn from slices that contain liver (tumor or not).
            The rest is drawn uniformly from all slices.
        crop_size: train on random (h, w) crops of the augmented plane (same pixel scale, fewer FLOPs);
            None trains on the whole plane.
        crop_foreground_prob: probability that a crop is centred on a liver/tumor pixel.
    """

    samples_per_epoch: int = 512
    tumor_fraction: float = 0.3
    liver_fraction: float = 0.4
    crop_size: tuple[int, int] | None = None
    crop_foreground_prob: float = 0.7

    def __post_init__(self) -> None:
        if self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {self.samples_per_epoch}")
        for name in ("tumor_fraction", "liver_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.crop_size is not None:
            object.__setattr__(self, "crop_size", (int(self.crop_size[0]), int(self.crop_size[1])))
            if min(self.crop_size) < 1:
                raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if self.tumor_fraction + self.liver_fraction > 1.0:
            raise ValueError(
                f"tumor_fraction + liver_fraction must be <= 1, got {self.tumor_fraction + self.liver_fraction}"
            )


def epoch_seed(seed: int, epoch: int, *extra: int) -> int:
    """A 63-bit seed derived from (seed, epoch, ...): every epoch's draws depend only on these numbers, so a run
    restarted at an epoch boundary repeats them exactly."""
    h = hashlib.sha256(repr((int(seed), int(epoch)) + tuple(int(e) for e in extra)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def sample_slices(
    cases: Sequence[PreparedCase], cfg: SamplingConfig, *, seed: int, epoch: int
) -> np.ndarray:
    """The epoch's sample table: int64 (samples_per_epoch, 3) rows of (case index, slice index, augment seed).

    Liver and tumor slices are oversampled by drawing the configured shares from those pools (pooled over the
    training cases; an empty pool falls back to the next broader one). Within a pool a slice is drawn with a
    probability proportional to its case's ``weight``.
    """
    rng = np.random.default_rng(epoch_seed(seed, epoch))
    pools: dict[str, np.ndarray] = {}
    for key, attr in (("tumor", "tumor_slices"), ("liver", "liver_slices")):
        parts = [np.stack([np.full(len(getattr(c, attr)), i), getattr(c, attr)], 1) for i, c in enumerate(cases)]
        pools[key] = np.concatenate(parts, 0) if parts else np.zeros((0, 2), np.int64)
    pools["all"] = np.concatenate(
        [np.stack([np.full(c.x.shape[0], i), np.arange(c.x.shape[0])], 1) for i, c in enumerate(cases)], 0
    )
    n = cfg.samples_per_epoch
    n_tumor = round(cfg.tumor_fraction * n)
    n_liver = round(cfg.liver_fraction * n)
    counts = {"tumor": n_tumor, "liver": n_liver, "all": n - n_tumor - n_liver}
    if len(pools["tumor"]) == 0:
        counts["liver"] += counts.pop("tumor")
    if len(pools["liver"]) == 0:
        counts["all"] += counts.pop("liver")
    weights = np.array([c.weight for c in cases], dtype=np.float64)

    def draw(pool: np.ndarray, size: int) -> np.ndarray:
        if np.all(weights == weights[0]):
            return pool[rng.integers(0, len(pool), size=size)]
        p = weights[pool[:, 0]]
        return pool[rng.choice(len(pool), size=size, p=p / p.sum())]

    rows = [draw(pools[k], c) for k, c in counts.items() if c > 0]
    table = np.concatenate(rows, 0)[rng.permutation(n)]
    aug = rng.integers(0, 2**62, size=(n, 1), dtype=np.int64)
    return np.concatenate([table.astype(np.int64), aug], 1)


def cache_key(spec: CaseSpec, **params: Any) -> str:
    """Stable key for a prepared case (file identity + preprocessing parameters)."""
    parts = [str(spec.image), str(spec.label), spec.kind]
    for p in (spec.image, spec.label):
        st = Path(p).stat()
        parts.append(f"{st.st_size}:{st.st_mtime_ns}")
    parts.append(repr(sorted(params.items())))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def phantom_cases(count: int, *, shape: Sequence[int], spacing: Sequence[float], seed: int) -> list[Case]:
    """Synthetic cases from ``resunet_trt.phantom.make_phantom`` (full labels), seeds ``seed .. seed+count-1``."""
    if count <= 0:
        return []
    from resunet_trt.phantom import make_phantom

    out = []
    for i in range(count):
        ct, labels = make_phantom(shape=tuple(shape), spacing=tuple(spacing), seed=int(seed) + i)
        out.append(
            Case(f"phantom-{int(seed) + i}", np.asarray(ct, np.int16), np.asarray(labels, np.uint8), "full",
                 tuple(float(s) for s in spacing))  # type: ignore[arg-type]
        )
    return out


__all__ = [
    "CASE_LIST_COLUMNS",
    "LABEL_KINDS",
    "Case",
    "CaseSpec",
    "PreparedCase",
    "Sampling",
    "SamplingConfig",
    "cache_key",
    "epoch_seed",
    "find_cases",
    "find_lits",
    "find_msd",
    "is_slice_set",
    "load_case",
    "phantom_cases",
    "prepare_case",
    "read_case_list",
    "resize_labels_nearest",
    "sample_slices",
    "slice_patient",
    "slice_set_files",
    "unclip_zeros",
    "slice_set_case",
    "split_cases",
]

