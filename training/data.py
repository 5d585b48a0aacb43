"""Training data: case discovery, validation, case-level split, preprocessing cache and slice sampling.

A *case* is one CT volume with its label volume. Three layouts are read:

* LiTS: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` in one folder;
* MSD Task03: ``imagesTr/liver_N.nii.gz`` with ``labelsTr/liver_N.nii.gz``;
* a CSV (or plain list) of ``image,label[,kind]`` lines, paths relative to the file; ``kind`` is ``full``
  (0 background, 1 liver, 2 tumor, the default) or ``liver_only`` (0/1 liver masks, tumor not annotated).

A folder holding ``ct.nii.gz`` with ``label.nii.gz`` (one case, as in tests/data) is read as well.

Volumes come through ``resunet_trt.io.load_ct``/``load_label`` in the canonical (D, H, W) orientation, and every
case is turned into network input by ``resunet_trt.kernels.preprocess`` — the op that inference runs — once, at
the start of training (the result is cached per case). Augmentation then works on 2D (K, h, w) samples.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LABEL_KINDS = ("full", "liver_only")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class CaseSpec:
    """Where one case lives.

    Attributes:
        name: a short unique id (used in splits and logs).
        image: CT file (NIfTI) or DICOM series folder.
        label: label NIfTI.
        kind: ``"full"`` (0/1/2 labels) or ``"liver_only"`` (liver mask; tumor not annotated).
    """

    name: str
    image: Path
    label: Path
    kind: str = "full"

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"case {self.name}: kind must be one of {LABEL_KINDS}, got {self.kind!r}")


@dataclass
class Case:
    """One loaded case.

    Attributes:
        name: case id.
        hu: int16 (D, H, W) Hounsfield units, canonical orientation.
        labels: uint8 (D, H, W); for ``liver_only`` cases 0/1.
        kind: label kind (see :class:`CaseSpec`).
        spacing: (dz, dy, dx) in mm.
    """

    name: str
    hu: np.ndarray
    labels: np.ndarray
    kind: str = "full"
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)


def _strip_nifti(name: str) -> str | None:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _index_by_stem(folder: Path, pattern: re.Pattern[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = _strip_nifti(p.name)
        if stem is None:
            continue
        m = pattern.fullmatch(stem)
        if m:
            out[m.group(1)] = p
    return out


def _pair(
    images: dict[str, Path], labels: dict[str, Path], *, prefix: str, where: Path
) -> list[CaseSpec]:
    missing = [images[k] for k in images if k not in labels]
    if missing:
        raise ValueError(f"no label file for image {missing[0]} (expected its label in {where})")
    orphans = [labels[k] for k in labels if k not in images]
    if orphans:
        logger.warning("label files without an image are ignored: %s", ", ".join(map(str, orphans)))

    def order(k: str) -> tuple[int, str]:
        return (int(k), k) if k.isdigit() else (1 << 30, k)

    return [CaseSpec(name=f"{prefix}{k}", image=images[k], label=labels[k]) for k in sorted(images, key=order)]


def find_lits(folder: str | Path) -> list[CaseSpec]:
    """LiTS layout: ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` in ``folder``."""
    folder = Path(folder)
    images = _index_by_stem(folder, re.compile(r"volume-(\d+)"))
    labels = _index_by_stem(folder, re.compile(r"segmentation-(\d+)"))
    if not images:
        raise ValueError(f"{folder}: no volume-N.nii[.gz] files (LiTS layout)")
    return _pair(images, labels, prefix="lits-", where=folder)


def find_msd(folder: str | Path) -> list[CaseSpec]:
    """MSD Task03 layout: ``imagesTr/liver_N.nii.gz`` + ``labelsTr/liver_N.nii.gz`` under ``folder``."""
    folder = Path(folder)
    img_dir, lab_dir = folder / "imagesTr", folder / "labelsTr"
    if not img_dir.is_dir():
        raise ValueError(f"{folder}: no imagesTr folder (MSD Task03 layout)")
    pattern = re.compile(r"(?!\._)\w*?_(\d+)")
    images = _index_by_stem(img_dir, pattern)
    labels = _index_by_stem(lab_dir, pattern) if lab_dir.is_dir() else {}
    if not images:
        raise ValueError(f"{img_dir}: no liver_N.nii.gz files (MSD Task03 layout)")
    return _pair(images, labels, prefix="msd-", where=lab_dir)


def read_case_list(path: str | Path) -> list[CaseSpec]:
    """A CSV/list of ``image,label[,kind]`` lines (optional header ``image,label,kind``; ``#`` comments).

    Relative paths are taken relative to the list file's folder.
    """
    path = Path(path)
    specs: list[CaseSpec] = []
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["image", "label"]:
        rows = rows[1:]
    for lineno, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise ValueError(f"{path}: entry {lineno} must be 'image,label[,kind]', got {row!r}")
        kind = cells[2] if len(cells) > 2 and cells[2] else "full"
        if kind not in LABEL_KINDS:
            raise ValueError(f"{path}: entry {lineno}: kind must be one of {LABEL_KINDS}, got {kind!r}")
        image = (path.parent / cells[0]).resolve() if not Path(cells[0]).is_absolute() else Path(cells[0])
        label = (path.parent / cells[1]).resolve() if not Path(cells[1]).is_absolute() else Path(cells[1])
        name = _case_name_from(image)
        specs.append(CaseSpec(name=name, image=image, label=label, kind=kind))
    if not specs:
        raise ValueError(f"{path}: the case list is empty")
    return specs


def _case_name_from(image: Path) -> str:
    stem = _strip_nifti(image.name) or image.name
    # one folder per case (…/case/ct.nii.gz): the folder is the informative part
    return image.parent.name if stem in ("ct", "image", "volume", "img") else stem


def find_cases(source: str | Path, *, kind: str | None = None) -> list[CaseSpec]:
    """Discover cases in a folder (LiTS, MSD Task03, or one ``ct.nii.gz`` + ``label.nii.gz`` case) or a list file.

    Args:
        source: folder or ``.csv``/``.txt`` list.
        kind: force the label kind of every case found (``"full"`` or ``"liver_only"``).

    Returns:
        the case specs, in a stable order.
    """
    source = Path(source)
    if not source.exists():
        raise ValueError(f"data source does not exist: {source}")
    if source.is_file():
        specs = read_case_list(source)
    elif (source / "imagesTr").is_dir():
        specs = find_msd(source)
    elif any(_strip_nifti(p.name) and p.name.startswith("volume-") for p in source.iterdir()):
        specs = find_lits(source)
    elif any((source / f"ct{s}").is_file() for s in NIFTI_SUFFIXES):
        image = next(source / f"ct{s}" for s in NIFTI_SUFFIXES if (source / f"ct{s}").is_file())
        labels = sorted(p for p in source.iterdir() if _strip_nifti(p.name) and p.name != image.name)
        if not labels:
            raise ValueError(f"no label file for image {image} (expected label.nii.gz beside it)")
        label = next((p for p in labels if _strip_nifti(p.name) == "label"), labels[0])
        specs = [CaseSpec(name=source.name, image=image, label=label)]
    else:
        raise ValueError(
            f"{source}: empty or unrecognised data folder (expected LiTS volume-N/segmentation-N files, "
            "an MSD imagesTr/labelsTr pair, or ct.nii.gz + label.nii.gz)"
        )
    if kind is not None:
        if kind not in LABEL_KINDS:
            raise ValueError(f"kind must be one of {LABEL_KINDS}, got {kind!r}")
        specs = [CaseSpec(s.name, s.image, s.label, kind) for s in specs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: duplicate case names {sorted({n for n in names if names.count(n) > 1})}")
    return specs


def load_case(spec: CaseSpec) -> Case:
    """Load and check one case; ValueError naming the file on any problem.

    Checks (through ``resunet_trt.io``): the image is a 3D CT, the label exists, has the image's on-disk shape
    and affine, and holds only 0/1/2 (for ``liver_only`` cases a 2 is taken as liver).
    """
    from resunet_trt import io as rio

    if not Path(spec.image).exists():
        raise ValueError(f"image file not found: {spec.image}")
    if not Path(spec.label).exists():
        raise ValueError(f"no label file for image {spec.image}: {spec.label} does not exist")
    try:
        vol = rio.load_ct(spec.image)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{spec.image}: cannot be read as a 3D CT volume ({exc})") from exc
    if vol.hu.ndim != 3:
        raise ValueError(f"{spec.image}: expected a 3D image, got shape {vol.hu.shape}")
    try:
        labels = rio.load_label(spec.label, vol)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{spec.label}: label does not match image {spec.image} ({exc})") from exc
    if labels.shape != vol.hu.shape:
        raise ValueError(f"{spec.label}: label shape {labels.shape} differs from image shape {vol.hu.shape}")
    values = np.unique(labels)
    bad = [int(v) for v in values if v not in (0, 1, 2)]
    if bad:
        raise ValueError(f"{spec.label}: label values must be in {{0, 1, 2}}, found {bad}")
    if spec.kind == "liver_only":
        labels = (labels > 0).astype(np.uint8)
    return Case(
        name=spec.name,
        hu=np.ascontiguousarray(vol.hu),
        labels=np.ascontiguousarray(labels, dtype=np.uint8),
        kind=spec.kind,
        spacing=tuple(float(s) for s in vol.spacing),  # type: ignore[arg-type]
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


def resize_labels_nearest(labels: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the plane of (D, H, W) labels to (D, h, w).

    Uses the half-pixel convention of the bilinear image resize (output pixel centre (i + 0.5) * H / h - 0.5),
    so labels land on the pixels the image lands on.
    """
    _, hh, ww = labels.shape
    oh, ow = out_size
    rows = np.minimum(np.floor((np.arange(oh) + 0.5) * hh / oh).astype(np.int64), hh - 1)
    cols = np.minimum(np.floor((np.arange(ow) + 0.5) * ww / ow).astype(np.int64), ww - 1)
    return np.ascontiguousarray(labels[:, rows][:, :, cols])


def preprocess_volume(
    hu: np.ndarray,
    *,
    window: tuple[float, float],
    plane_size: tuple[int, int],
    context: int,
    dtype: str = "float16",
) -> np.ndarray:
    """Network input for every slice of a volume: (D, H, W) HU -> (D, K, h, w), via ``kernels.preprocess``."""
    from resunet_trt import kernels

    return np.asarray(
        kernels.preprocess(hu, window=tuple(window), out_size=tuple(plane_size), context=context, dtype=dtype)
    )


@dataclass
class PreparedCase:
    """A case turned into network input once: ``x`` (D, K, h, w), ``y`` (D, h, w) at the plane size, and the
    original labels for full-resolution validation."""

    name: str
    kind: str
    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    liver_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tumor_slices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def prepare_case(
    case: Case, *, window: tuple[float, float], plane_size: tuple[int, int], context: int, dtype: str = "float16"
) -> PreparedCase:
    """Preprocess a whole case once (the same op as inference) and index its liver/tumor slices."""
    x = preprocess_volume(case.hu, window=window, plane_size=plane_size, context=context, dtype=dtype)
    y = resize_labels_nearest(case.labels, plane_size)
    per_slice = case.labels.reshape(case.labels.shape[0], -1)
    liver = np.flatnonzero((per_slice >= 1).any(axis=1))
    tumor = np.flatnonzero((per_slice == 2).any(axis=1)) if case.kind == "full" else np.zeros(0, np.int64)
    return PreparedCase(case.name, case.kind, x, y, case.labels, liver, tumor)


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
    training cases; an empty pool falls back to the next broader one).
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
    rows = [pools[k][rng.integers(0, len(pools[k]), size=c)] for k, c in counts.items() if c > 0]
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
    "Case",
    "CaseSpec",
    "PreparedCase",
    "SamplingConfig",
    "cache_key",
    "epoch_seed",
    "find_cases",
    "find_lits",
    "find_msd",
    "load_case",
    "phantom_cases",
    "prepare_case",
    "preprocess_volume",
    "read_case_list",
    "resize_labels_nearest",
    "sample_slices",
    "split_cases",
]

