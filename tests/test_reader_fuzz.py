"""Mutation fuzzing of the NIfTI and DICOM readers: damaged files give a CTVolume or a ValueError naming the file.

Valid small files made from real CT are damaged in ways seen in the wild and in ways no scanner writes: header
fields set to zero, negative, huge, NaN or nonsense values, random bytes flipped in the header or the pixels,
files cut short, DICOM attributes removed or made inconsistent across slices. For each damaged input,
:func:`resunet_trt.io.load_ct` must either

* return a usable CTVolume: int16 (D, H, W), positive finite spacing, finite affine, or
* raise ValueError/TypeError whose message names the file or folder,

and nothing else: no other exception type, no message without the file's name, no long stall or giant
allocation (a header claiming gigabytes of voxels is refused before any read). The mutations come from a
seeded generator, so a failure is reproducible; the failing mutation is printed. Both tests together take
a few seconds on two cores (bounded well under 30 s).
"""

from __future__ import annotations

import copy
import gzip
import io
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from resunet_trt.io import load_ct

DATA = Path(__file__).parent / "data"
NIFTI_CASES = 400
DICOM_CASES = 200
SLOW_S = 2.0  # one read of these small files taking longer than this is a failure (a stall or a huge read)


def _check_outcome(load, where: Path, description: str, outcomes: dict[str, int], failures: list[str]) -> None:
    t0 = time.perf_counter()
    try:
        volume = load()
    except (ValueError, TypeError) as exc:
        outcomes["refused"] += 1
        if str(where) not in str(exc):
            failures.append(f"{description}: {type(exc).__name__} without the file's name: {exc}")
    except Exception as exc:  # noqa: BLE001 - any other type is what this test looks for
        failures.append(f"{description}: {type(exc).__name__}: {exc}")
    else:
        outcomes["read"] += 1
        hu, spacing, affine = volume.hu, volume.spacing, volume.affine
        if hu.dtype != np.int16 or hu.ndim != 3 or hu.size == 0:
            failures.append(f"{description}: read as {hu.dtype} {hu.shape}")
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            failures.append(f"{description}: read with spacing {spacing}")
        if not np.all(np.isfinite(affine)):
            failures.append(f"{description}: read with a non-finite affine")
    elapsed = time.perf_counter() - t0
    if elapsed > SLOW_S:
        failures.append(f"{description}: took {elapsed:.1f} s")


# ------------------------------------------------------------------------------------------------
# NIfTI
# ------------------------------------------------------------------------------------------------
_NIFTI_FIELDS = [
    "sizeof_hdr", "dim", "datatype", "bitpix", "pixdim", "vox_offset", "scl_slope", "scl_inter",
    "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_z",
    "srow_x", "srow_y", "srow_z", "magic", "xyzt_units", "dim_info", "intent_code",
]  # fmt: skip
_NASTY = [0, -1, 1, 2, 3, 4, 7, 8, 16, 64, 255, 512, 1024, 32767, -32768, 2**31 - 1, 0.5, 1e-30, 1e30, -1e30,
          math.nan, math.inf, -math.inf]  # fmt: skip


@pytest.fixture(scope="module")
def nifti_bytes() -> bytes:
    """A small real CT (LiTS, 16 x 16 x 17 int16 with a real affine) as an uncompressed NIfTI-1 file."""
    src = nib.load(DATA / "lits_small64" / "ct.nii.gz")
    data = np.ascontiguousarray(np.asanyarray(src.dataobj)[::4, ::4, ::2]).astype(np.int16)
    affine = src.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([4.0, 4.0, 2.0])
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    return img.to_bytes()


def _mutate_nifti(base: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    data = bytearray(base)
    kind = int(rng.integers(5))
    if kind <= 1:  # header fields set to nasty values, through the header's own layout
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(data)), check=False)
        changes = []
        for _ in range(int(rng.integers(1, 4))):
            name = _NIFTI_FIELDS[int(rng.integers(len(_NIFTI_FIELDS)))]
            value = _NASTY[int(rng.integers(len(_NASTY)))]
            current = header[name]
            try:
                if current.shape:
                    index = int(rng.integers(current.shape[0]))
                    current[index] = value
                    header[name] = current
                    changes.append(f"{name}[{index}]={value}")
                else:
                    header[name] = value
                    changes.append(f"{name}={value}")
            except (ValueError, OverflowError, TypeError):  # not representable in that field
                continue
        data[:348] = header.binaryblock
        return bytes(data), "header " + ", ".join(changes)
    if kind == 2:
        offsets = sorted(int(i) for i in rng.integers(0, 352, size=int(rng.integers(1, 8))))
        for i in offsets:
            data[i] = int(rng.integers(256))
        return bytes(data), f"header bytes {offsets} randomised"
    if kind == 3:
        cut = int(rng.integers(0, len(data)))
        return bytes(data[:cut]), f"cut to {cut} of {len(base)} bytes"
    offsets = rng.integers(352, len(data), size=int(rng.integers(1, 60)))
    for i in offsets:
        data[int(i)] = int(rng.integers(256))
    return bytes(data), f"{len(offsets)} voxel bytes randomised"


@pytest.mark.filterwarnings("ignore::UserWarning")  # nibabel/numpy may warn about damaged headers; not the point
def test_nifti_reader_survives_mutations(nifti_bytes, tmp_path):
    rng = np.random.default_rng(20240515)
    outcomes = {"read": 0, "refused": 0}
    failures: list[str] = []
    for case in range(NIFTI_CASES):
        payload, what = _mutate_nifti(nifti_bytes, rng)
        gz = rng.random() < 0.3
        path = tmp_path / f"case{case}.nii{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(payload, compresslevel=1) if gz else payload)
        _check_outcome(lambda: load_ct(path), path, f"case {case} ({'gz, ' if gz else ''}{what})", outcomes, failures)
        path.unlink()
    assert not failures, "\n".join(failures[:20])
    # Both ways out were taken many times: the mutations neither always break nor never matter.
    assert outcomes["read"] > NIFTI_CASES // 10 and outcomes["refused"] > NIFTI_CASES // 10, outcomes


@pytest.mark.parametrize("gz", [False, True])
def test_header_claiming_gigabytes_is_refused_before_reading(nifti_bytes, tmp_path, gz):
    """A 4 kB file whose dim claims 3000 x 3000 x 300 int16 voxels (5.4 GB) is refused at once, no allocation."""
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(nifti_bytes), check=False)
    header["dim"] = [3, 3000, 3000, 300, 1, 1, 1, 1]
    payload = header.binaryblock + nifti_bytes[348:]
    path = tmp_path / f"claims_gigabytes.nii{'.gz' if gz else ''}"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="more than this") as err:
        load_ct(path)
    assert time.perf_counter() - t0 < 1.0 and str(path) in str(err.value)


# ------------------------------------------------------------------------------------------------
# DICOM
# ------------------------------------------------------------------------------------------------
_DICOM_VALUES = {
    "ImagePositionPatient": [["nan", "0", "0"], ["1", "2"], ["a", "b", "c"], ["1e308", "0", "0"], ["0", "0", "0"]],
    "ImageOrientationPatient": [
        ["0"] * 6,
        ["1", "0", "0", "1", "0", "0"],
        ["2", "0", "0", "0", "2", "0"],
        ["1", "0", "0", "0", "1"],
        ["nan"] * 6,
        ["1", "0", "0", "0", "0", "1"],
    ],
    "PixelSpacing": [["0", "0"], ["-1", "1"], ["nan", "1"], ["1"], ["1e-30", "1e-30"], ["1e30", "1"]],
    "Rows": [0, 1, 31, 64, 65535],
    "Columns": [0, 33, 65535],
    "BitsAllocated": [8, 32, 1, 0, 12],
    "BitsStored": [0, 17, 8],
    "PixelRepresentation": [0, 1, 2],
    "RescaleSlope": ["0", "nan", "1e30", "-1", "inf"],
    "RescaleIntercept": ["nan", "1e30", "-1e30", "0.5"],
    "Modality": ["MR", "", None],
    "SeriesInstanceUID": ["", "1.2", None],
    "SliceThickness": ["0", "-1", "nan", None],
    "SamplesPerPixel": [3, 0],
    "PhotometricInterpretation": ["RGB", "PALETTE COLOR", "YBR_FULL"],
    "NumberOfFrames": ["2", "0"],
    "PixelData": [b"", b"\x00\x01", None],
}


@pytest.fixture(scope="module")
def dicom_slices():
    """The three real CT slices of dicom_ct3slice, cropped to 32 x 32 pixels (fast to write and decode)."""
    pydicom = pytest.importorskip("pydicom")
    slices = []
    for file in sorted((DATA / "dicom_ct3slice" / "series").iterdir()):
        ds = pydicom.dcmread(file)
        pixels = np.ascontiguousarray(ds.pixel_array[240:272, 240:272])
        ds.Rows, ds.Columns = 32, 32
        ds.PixelData = pixels.tobytes()
        slices.append(ds)
    return slices


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the invalid values written on purpose
def test_dicom_reader_survives_mutations(dicom_slices, tmp_path):
    rng = np.random.default_rng(20240516)
    keys = list(_DICOM_VALUES)
    outcomes = {"read": 0, "refused": 0}
    failures: list[str] = []
    for case in range(DICOM_CASES):
        folder = tmp_path / f"series{case}"
        folder.mkdir()
        n = int(rng.integers(1, 4))
        victims = sorted(int(k) for k in rng.choice(3, size=int(rng.integers(1, 4)), replace=False))
        changes = []
        for _ in range(int(rng.integers(0, 3))):  # zero changes leaves a valid series (or a flipped-bytes one)
            key = keys[int(rng.integers(len(keys)))]
            options = _DICOM_VALUES[key]
            changes.append((key, options[int(rng.integers(len(options)))]))
        flip_bytes = rng.random() < 0.25
        for k, template in enumerate(dicom_slices[:n]):
            ds = copy.deepcopy(template)  # Dataset.copy() shares elements: a change would leak
            if k in victims:
                for key, value in changes:
                    if value is None:
                        if key in ds:
                            delattr(ds, key)
                    else:
                        try:
                            setattr(ds, key, value)
                        except (ValueError, TypeError, OverflowError):  # pydicom refuses to even hold it
                            continue
            path = folder / f"{k:02d}.dcm"
            ds.save_as(path)
            if flip_bytes and k in victims:
                raw = bytearray(path.read_bytes())
                for i in rng.integers(128, len(raw), size=int(rng.integers(1, 10))):
                    raw[int(i)] = int(rng.integers(256))
                path.write_bytes(bytes(raw))
        what = f"case {case}: {n} slices, slices {victims} get {changes}{' and flipped bytes' if flip_bytes else ''}"
        _check_outcome(lambda: load_ct(folder), folder, what, outcomes, failures)
    assert not failures, "\n".join(failures[:20])
    assert outcomes["read"] > DICOM_CASES // 10 and outcomes["refused"] > DICOM_CASES // 10, outcomes


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("PixelSpacing", ["0", "0"], "PixelSpacing"),
        ("PixelSpacing", ["1e-30", "1e-30"], "singular"),
        ("SliceThickness", "0", "SliceThickness"),
        ("SliceThickness", None, "SliceThickness"),
    ],
)
def test_dicom_zero_or_missing_sizes_are_refused_naming_the_folder(dicom_slices, tmp_path, key, value, expected):
    """Found by the fuzzing above: these used to fail without the folder's name, or read a missing or zero
    single-slice thickness as 1 mm."""
    folder = tmp_path / "series"
    folder.mkdir()
    n = 1 if key == "SliceThickness" else 3
    for k, template in enumerate(dicom_slices[:n]):
        ds = copy.deepcopy(template)
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
        ds.save_as(folder / f"{k:02d}.dcm")
    with pytest.raises(ValueError, match=expected) as err:
        load_ct(folder)
    assert str(folder) in str(err.value)
