"""Finding labelled cases on disk: the one place that knows the dataset layouts and matches images to labels.

Three questions, one module:

* **Training cases** (:func:`find_cases`, :class:`CaseSpec`): a LiTS folder (``volume-N`` with
  ``segmentation-N``), an MSD Task03 folder (``imagesTr/liver_N`` with ``labelsTr/liver_N``), one case folder
  (``ct.nii.gz`` with ``label.nii.gz``), a folder of 2D slices (``images/`` with ``masks/``), or a case list
  (CSV of ``image,label[,kind]`` and the optional columns of :data:`CASE_LIST_COLUMNS`). Used by training.
* **Image/label pairs in any folder** (:func:`discover`, :func:`data_cases`, :func:`label_files`): the rules
  below, which also pair a folder of predicted masks with a folder of references. Used by ``resunet-eval`` and
  ``resunet-bench --data``.
* **CT volumes for calibration** (:func:`find_ct_volumes`): every CT file under a folder. Used by the INT8
  export.

**How files become cases** (:func:`discover`). NIfTI files (``.nii``, ``.nii.gz``) are searched in the folder
and its subfolders (two levels). A file is a *label* when its name (extension stripped) is ``segmentation-N``,
or is or ends in ``label``, ``labels``, ``mask``, ``seg``, ``segmentation``, ``gt`` or ``pred`` (``case_mask``,
``case-label``...), or when it sits in a ``labelsTr``/``labelsTs`` folder; it is an *image* when its name is
``volume-N``, ``ct``, ``image`` or ends in ``_ct``, ``_image`` or ``_0000`` (nnU-Net channel), or it sits in
``imagesTr``/``imagesTs``; any other NIfTI is *unclassified*. The case name of a file is:

- its subfolder's path when it sits in a subfolder holding one case (one label, at most one image), as in
  ``data/case_07/ct.nii.gz`` + ``data/case_07/label.nii.gz`` -> ``case_07``; the same for the folder given
  itself when it holds just such a pair with generic names (``ct``, ``label``, ``mask``...): its own name;
- otherwise its name without the label/image suffix, with the LiTS and MSD names reduced to their number, so
  that they match each other: ``volume-12``, ``segmentation-12``, ``liver_12``, ``liver_12_0000``,
  ``segmentation-12_mask`` -> ``12``; ``case7_mask`` -> ``case7``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resunet_trt.case_columns import (
    CASE_LIST_COLUMNS,
    parse_fold,
    parse_label_map,
    parse_slices,
    parse_spacing,
    parse_zero_hu,
)

logger = logging.getLogger(__name__)

#: NIfTI file suffixes, the longer first so that ``.nii.gz`` is stripped whole.
NIFTI_SUFFIXES = (".nii.gz", ".nii")
LABEL_KINDS = ("full", "liver_only", "negative")

_LABEL_WORDS = ("segmentation", "labels", "label", "mask", "seg", "gt", "pred", "prediction")
_IMAGE_WORDS = ("volume", "ct", "image", "img", "0000")
_LABEL_DIRS = ("labelstr", "labelsts", "labels")
_IMAGE_DIRS = ("imagestr", "imagests", "images")
_SUFFIX_RE = re.compile(r"[_\-.](" + "|".join(_LABEL_WORDS + _IMAGE_WORDS) + r")$", re.IGNORECASE)
_LITS_RE = re.compile(r"^(?:volume|segmentation|liver)[_\-](\d+)$", re.IGNORECASE)
_MAX_DEPTH = 2


def nifti_stem(name: str) -> str | None:
    """``case.nii.gz`` -> ``case``; None for a name without a NIfTI suffix (or nothing before it)."""
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def strip_nifti_suffix(name: str) -> str:
    """``case.nii.gz`` -> ``case``; names without a NIfTI suffix are returned unchanged."""
    stem = nifti_stem(name)
    return name if stem is None else stem


def natural_key(key: str) -> list[Any]:
    """Sort key that orders ``case2`` before ``case10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


# ----------------------------------------------------------------------------------------- training cases


@dataclass(frozen=True)
class CaseSpec:
    """Where one case lives.

    Attributes:
        name: a short unique id (used in splits and logs).
        image: CT file (NIfTI) or DICOM series folder.
        label: label NIfTI.
        kind: ``"full"`` (0/1/2 labels), ``"liver_only"`` (liver mask; tumor not annotated) or ``"negative"``
            (no label file; every voxel is background).
        label_map: (value, class) pairs applied to the label file; values not listed become background. None
            reads the file as 0/1/2.
        spacing: (dz, dy, dx) in mm replacing the image header's, or None.
        slices: (start, stop) canonical slices to keep, or None for all.
        weight: sampling weight of each of the case's slices (1.0: like any other slice).
        slice_set: a folder of 2D slices (``images/`` + ``masks/`` JPEGs) rather than a volume.
        fold: slice sets only: ``(k, n, keep)`` splits the slices by patient (the number in the file name after
            the orientation prefix, modulo ``n``): ``keep`` True keeps only fold ``k``, False leaves it out.
            None keeps every slice.
        zero_hu: slice sets only: ``(outside, inside)``: the HU given to pixels of value 0-2 (HU clipped at 0)
            outside the body and inside it, so that air and fat look as they do in a CT; None keeps them at 0.
    """

    name: str
    image: Path
    label: Path | None
    kind: str = "full"
    label_map: tuple[tuple[int, int], ...] | None = None
    spacing: tuple[float, float, float] | None = None
    slices: tuple[int, int] | None = None
    weight: float = 1.0
    slice_set: bool = False
    fold: tuple[int, int, bool] | None = None
    zero_hu: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in LABEL_KINDS:
            raise ValueError(f"case {self.name}: kind must be one of {LABEL_KINDS}, got {self.kind!r}")
        if (self.label is None) != (self.kind == "negative"):
            raise ValueError(f"case {self.name}: a label file is needed unless the kind is 'negative'")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ValueError(f"case {self.name}: weight must be > 0, got {self.weight}")
        if self.zero_hu is not None and not self.slice_set:
            raise ValueError(f"case {self.name}: zero_hu is for a folder of 8-bit slices, not a volume")
        if self.fold is not None:
            if not self.slice_set:
                raise ValueError(f"case {self.name}: a fold splits a folder of 2D slices by patient, not a volume")
            if not (self.fold[1] >= 2 and 0 <= self.fold[0] < self.fold[1]):
                raise ValueError(f"case {self.name}: fold must be k of n with n >= 2 and 0 <= k < n, got {self.fold}")


def _index_by_stem(folder: Path, pattern: re.Pattern[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        stem = nifti_stem(p.name)
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
    """A CSV/list of ``image,label[,kind]`` lines (``#`` comments), or a CSV whose header names any of
    :data:`CASE_LIST_COLUMNS` (``image`` is required; see :class:`CaseSpec` for the others).

    Relative paths are taken relative to the list file's folder; a folder of 2D slices (``images/`` +
    ``masks/``) may stand as the image, with an empty label.
    """
    path = Path(path)
    specs: list[CaseSpec] = []
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r and not r[0].lstrip().startswith("#")]
    header = ["image", "label", "kind"]
    if rows and [c.strip().lower() for c in rows[0][:1]] == ["image"]:
        header = [c.strip().lower() for c in rows[0]]
        unknown = [c for c in header if c not in CASE_LIST_COLUMNS]
        if unknown:
            raise ValueError(f"{path}: unknown columns {unknown}; known: {', '.join(CASE_LIST_COLUMNS)}")
        rows = rows[1:]

    def resolve(cell: str) -> Path:
        return Path(cell) if Path(cell).is_absolute() else (path.parent / cell).resolve()

    for lineno, row in enumerate(rows, 1):
        where = f"{path}: entry {lineno}"
        cells = dict(zip(header, (c.strip() for c in row)))
        image_cell, label_cell = cells.get("image", ""), cells.get("label", "")
        kind = cells.get("kind") or "full"
        if kind not in LABEL_KINDS:
            raise ValueError(f"{where}: kind must be one of {LABEL_KINDS}, got {kind!r}")
        image = resolve(image_cell) if image_cell else None
        slice_set = image is not None and is_slice_set(image)
        if image is None or (not label_cell and kind != "negative" and not slice_set):
            raise ValueError(f"{where} must be 'image,label[,kind]' (label empty only for kind negative), got {row!r}")
        spec = slice_set_case(image, name=image.name) if slice_set else CaseSpec(
            name=_case_name_from(image), image=image, label=resolve(label_cell) if label_cell else None, kind=kind,
        )
        specs.append(dataclasses.replace(
            spec,
            label_map=parse_label_map(cells["label_map"], where) if cells.get("label_map") else None,
            spacing=parse_spacing(cells["spacing"], where) if cells.get("spacing") else None,
            slices=parse_slices(cells["slices"], where) if cells.get("slices") else None,
            weight=float(cells["weight"]) if cells.get("weight") else 1.0,
            fold=parse_fold(cells["fold"], where) if cells.get("fold") else None,
            zero_hu=parse_zero_hu(cells["zero_hu"], where) if cells.get("zero_hu") else None,
        ))
    if not specs:
        raise ValueError(f"{path}: the case list is empty")
    names = [s.name for s in specs]
    for i, n in enumerate(names):  # the same image listed twice (e.g. its liver and its thorax) gets a suffix
        if names.count(n) > 1:
            specs[i] = dataclasses.replace(specs[i], name=f"{n}-{names[:i].count(n) + 1}")
    return specs


def is_slice_set(folder: Path) -> bool:
    """True for a folder of 2D slices: ``images/`` and ``masks/`` holding JPEG or PNG files of the same names."""
    return folder.is_dir() and (folder / "images").is_dir() and (folder / "masks").is_dir()


def slice_set_case(folder: Path, *, name: str | None = None) -> CaseSpec:
    """A slice set as one liver-only case (its masks merge liver and tumor)."""
    return CaseSpec(name=name or folder.name, image=folder, label=folder, kind="liver_only", slice_set=True)


def _case_name_from(image: Path) -> str:
    stem = nifti_stem(image.name) or image.name
    # one folder per case (…/case/ct.nii.gz): the folder is the informative part
    return image.parent.name if stem in ("ct", "image", "volume", "img", "series", "dicom") else stem


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
    elif is_slice_set(source):
        specs = [slice_set_case(source)]
    elif (source / "imagesTr").is_dir():
        specs = find_msd(source)
    elif any(nifti_stem(p.name) and p.name.startswith("volume-") for p in source.iterdir()):
        specs = find_lits(source)
    elif any((source / f"ct{s}").is_file() for s in NIFTI_SUFFIXES):
        image = next(source / f"ct{s}" for s in NIFTI_SUFFIXES if (source / f"ct{s}").is_file())
        labels = sorted(p for p in source.iterdir() if nifti_stem(p.name) and p.name != image.name)
        if not labels:
            raise ValueError(f"no label file for image {image} (expected label.nii.gz beside it)")
        label = next((p for p in labels if nifti_stem(p.name) == "label"), labels[0])
        specs = [CaseSpec(name=source.name, image=image, label=label)]
    else:
        raise ValueError(
            f"{source}: empty or unrecognised data folder (expected LiTS volume-N/segmentation-N files, "
            "an MSD imagesTr/labelsTr pair, or ct.nii.gz + label.nii.gz)"
        )
    if kind is not None:
        if kind not in LABEL_KINDS:
            raise ValueError(f"kind must be one of {LABEL_KINDS}, got {kind!r}")
        specs = [dataclasses.replace(s, kind=kind) for s in specs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: duplicate case names {sorted({n for n in names if names.count(n) > 1})}")
    return specs


# ----------------------------------------------------------------------------------------- pairs in any folder


def file_kind(path: Path) -> str:
    """``"label"``, ``"image"`` or ``"unknown"`` for a NIfTI file, from its name and folder (see the module doc)."""
    stem = strip_nifti_suffix(path.name).lower()
    parent = path.parent.name.lower()
    if parent in _LABEL_DIRS:
        return "label"
    if parent in _IMAGE_DIRS:
        return "image"
    last = re.split(r"[_\-.]", stem)[-1]
    # The suffix wins over a LiTS prefix: resunet-seg writes volume-N_mask for volume-N.
    if stem.startswith("segmentation-") or stem in _LABEL_WORDS or last in _LABEL_WORDS:
        return "label"
    if stem.startswith("volume-") or stem in _IMAGE_WORDS or last in _IMAGE_WORDS:
        return "image"
    return "unknown"


def case_key(name: str) -> str:
    """Case name from a file name: extension and label/image suffixes stripped, LiTS/MSD names to their number.

    ``segmentation-12.nii`` -> ``12``, ``liver_012_0000.nii.gz`` -> ``12``, ``case7_mask.nii.gz`` -> ``case7``.
    """
    stem = strip_nifti_suffix(name)
    while True:
        stripped = _SUFFIX_RE.sub("", stem)
        if stripped == stem or not stripped:
            break
        stem = stripped
    match = _LITS_RE.match(stem)
    if match:
        return str(int(match.group(1)))
    return stem


def _nifti_files(root: Path) -> list[Path]:
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc)
            return
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                if depth < _MAX_DEPTH:
                    walk(entry, depth + 1)
            elif entry.is_file() and entry.name.lower().endswith(NIFTI_SUFFIXES):
                found.append(entry)

    walk(root, 0)
    return found


@dataclass
class CaseFiles:
    """The files of one case found in a folder."""

    key: str
    label: Path | None = None
    image: Path | None = None
    extra: list[Path] = field(default_factory=list)


def discover(root: str | os.PathLike[str]) -> tuple[dict[str, CaseFiles], list[str]]:
    """Find the cases of a folder (rules in the module docstring).

    Args:
        root: a folder.

    Returns:
        ``(cases by key, problems)``: ``problems`` lists files that could not be given a unique role.

    Raises:
        ValueError: ``root`` is not a folder.
    """
    base = Path(root)
    if not base.is_dir():
        raise ValueError(f"expected a folder of NIfTI files, got {str(root)!r} (not a folder)")
    files = _nifti_files(base)
    by_folder: dict[Path, list[Path]] = {}
    for f in files:
        by_folder.setdefault(f.parent, []).append(f)

    cases: dict[str, CaseFiles] = {}
    problems: list[str] = []

    def put(key: str, path: Path, kind: str) -> None:
        case = cases.setdefault(key, CaseFiles(key=key))
        slot = "label" if kind == "label" else "image" if kind == "image" else None
        if slot is None:
            case.extra.append(path)
        elif getattr(case, slot) is None:
            setattr(case, slot, path)
        else:
            problems.append(
                f"case {key!r}: two {slot} files, {getattr(case, slot)} and {path}; keeping the first"
            )

    for folder, members in by_folder.items():
        kinds = {m: file_kind(m) for m in members}
        n_label = sum(k == "label" for k in kinds.values())
        n_image = sum(k == "image" for k in kinds.values())
        n_unknown = sum(k == "unknown" for k in kinds.values())
        small = n_label <= 1 and n_image <= 1 and (n_label + n_image + n_unknown) <= 2
        generic = all(strip_nifti_suffix(m.name).lower() in _LABEL_WORDS + _IMAGE_WORDS for m in members)
        collection = folder.name.lower() in _LABEL_DIRS + _IMAGE_DIRS  # MSD imagesTr/labelsTr hold many cases
        if small and not collection and (folder != base or generic) and n_label + n_unknown >= 1:
            key = folder.relative_to(base).as_posix() if folder != base else base.resolve().name
            for m, kind in kinds.items():
                put(key, m, kind)
        else:
            for m, kind in kinds.items():
                put(case_key(m.name), m, kind)
    # An unclassified file stands in for a missing label (label folders) or image (data folders) later.
    return cases, problems


def label_files(root: str | os.PathLike[str]) -> tuple[dict[str, Path], list[str]]:
    """Label file per case key in a folder of masks (a label file, else the case's only unclassified file)."""
    cases, problems = discover(root)
    out: dict[str, Path] = {}
    for key, case in cases.items():
        if case.label is not None:
            out[key] = case.label
        elif len(case.extra) == 1:
            out[key] = case.extra[0]
        elif case.extra:
            problems.append(
                f"case {key!r}: several unclassified files {[str(p) for p in case.extra]}; skipped"
            )
    return out, problems


def data_cases(root: str | os.PathLike[str]) -> tuple[dict[str, tuple[Path, Path]], list[str]]:
    """(image, label) per case key in a labelled data folder; cases lacking either are reported in ``problems``."""
    cases, problems = discover(root)
    out: dict[str, tuple[Path, Path]] = {}
    for key, case in cases.items():
        image = case.image if case.image is not None else (case.extra[0] if len(case.extra) == 1 else None)
        if case.label is None or image is None:
            what = "label" if case.label is None else "image"
            problems.append(f"case {key!r}: no {what} file found; skipped")
            continue
        out[key] = (image, case.label)
    return out, problems


# ----------------------------------------------------------------------------------------- calibration volumes


def find_ct_volumes(data_dir: str | os.PathLike[str]) -> list[Path]:
    """CT files under ``data_dir``: ``ct.nii[.gz]``, ``volume-*.nii[.gz]`` (LiTS) and ``imagesTr/*.nii[.gz]`` (MSD).

    Raises:
        FileNotFoundError: when ``data_dir`` is missing or holds no CT file.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"calibration data folder not found: {root}")
    found: set[Path] = set()
    for pattern in (
        "**/ct.nii",
        "**/ct.nii.gz",
        "**/volume-*.nii",
        "**/volume-*.nii.gz",
        "**/imagesTr/*.nii",
        "**/imagesTr/*.nii.gz",
    ):
        found.update(p for p in root.glob(pattern) if p.is_file() and not p.name.startswith("._"))
    if not found:
        raise FileNotFoundError(
            f"no CT volume under {root} (looked for ct.nii[.gz], volume-*.nii[.gz], imagesTr/*.nii[.gz])"
        )
    return sorted(found)
