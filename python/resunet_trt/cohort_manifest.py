"""A cohort's record: the manifest (CSV + Parquet), the per-case journal, case lists, and what counts as done.

One row per case, columns :data:`MANIFEST_COLUMNS`; the journal (``.cohort_journal.jsonl``) gets a row as each
case finishes, the manifest is rewritten atomically from it, and a rerun skips the cases it records as done.
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .results import STAGES

logger = logging.getLogger("resunet_trt.cohort")

#: File names inside the output folder.
MANIFEST_CSV = "cohort_manifest.csv"
MANIFEST_PARQUET = "cohort_manifest.parquet"
JOURNAL = ".cohort_journal.jsonl"

#: Per-stage seconds recorded in the manifest: the Segmenter's stages and the case's wall time.
TIMING_COLUMNS = tuple(f"{stage}_s" for stage in (*STAGES, "total"))

#: The manifest's columns, in order, with their types (str, float, int).
MANIFEST_COLUMNS: tuple[tuple[str, type], ...] = (
    ("case", str),
    ("input", str),
    ("input_sha256", str),
    ("series_uid", str),
    ("status", str),
    ("error", str),
    ("liver_ml", float),
    ("tumor_ml", float),
    ("tumor_burden", float),
    ("lesion_count", int),
    *((name, float) for name in TIMING_COLUMNS),
    ("node", str),
    ("device", str),
    ("backend", str),
    ("worker", str),
    ("model_sha256", str),
    ("attempts", int),
    ("mask", str),
    ("dicom_seg", str),
    ("report", str),
    ("overlay", str),
    ("finished_utc", str),
)
_COLUMN_TYPES = dict(MANIFEST_COLUMNS)


def read_case_list(path: str | os.PathLike[str]) -> list[Path]:
    """The inputs listed in a CSV file: the ``path`` (or ``input``) column, else the first column.

    Relative paths are taken relative to the CSV's folder. Empty cells are skipped.

    Args:
        path: a CSV file with a header row.

    Returns:
        the listed paths, in order.

    Raises:
        FileNotFoundError: the CSV does not exist.
        ValueError: the CSV has no header row or lists nothing.
    """
    csv_path = Path(path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"case list not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise ValueError(f"{csv_path}: expected a CSV with a header row (e.g. 'path'), got an empty file")
        fields = [f.strip() for f in reader.fieldnames]
        column = next((f for f in ("path", "input") if f in fields), fields[0])
        raw = reader.fieldnames[fields.index(column)]
        paths = []
        for row in reader:
            cell = (row.get(raw) or "").strip()
            if cell:
                p = Path(cell).expanduser()
                paths.append(p if p.is_absolute() else csv_path.parent / p)
    if not paths:
        raise ValueError(f"{csv_path}: column {column!r} lists no input")
    return paths


def input_identity(path: str | os.PathLike[str]) -> tuple[str, str]:
    """What a case's input is, for the manifest and for resuming: ``(sha256 of the file, "")`` for a file,
    ``("", SeriesInstanceUID)`` for a DICOM folder (``""`` when the folder holds no single series)."""
    from .engine import sha256_file

    p = Path(path)
    if p.is_file():
        return sha256_file(p), ""
    if not p.is_dir():
        return "", ""
    import pydicom

    uids: set[str] = set()
    for file in sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - not a DICOM file: load_ct skips it too
            continue
        uids.add(str(ds.get("SeriesInstanceUID", "")))
    return "", (uids.pop() if len(uids) == 1 else "")


# --------------------------------------------------------------------------------------------------
# The manifest
# --------------------------------------------------------------------------------------------------
def empty_row(case: str, input_path: str) -> dict[str, Any]:
    """A manifest row with every column, nothing measured yet (status ``failed`` until a worker says ok)."""
    row: dict[str, Any] = {name: None for name, _ in MANIFEST_COLUMNS}
    row.update(case=case, input=input_path, status="failed", error="", attempts=0)
    return row


def write_manifest(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the run manifest, ``cohort_manifest.csv`` and ``cohort_manifest.parquet``, atomically.

    Args:
        rows: one dict per case with the keys of :data:`MANIFEST_COLUMNS` (missing keys are empty).
        out_dir: the cohort's output folder.

    Returns:
        (CSV path, Parquet path).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .files import atomic_write

    out = Path(out_dir)
    names = [name for name, _ in MANIFEST_COLUMNS]
    text = _io.StringIO()
    writer = csv.DictWriter(text, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in names})
    csv_path, parquet_path = out / MANIFEST_CSV, out / MANIFEST_PARQUET
    with atomic_write(csv_path) as tmp:
        tmp.write_text(text.getvalue(), encoding="utf-8")
    arrow_type = {str: pa.string(), float: pa.float64(), int: pa.int64()}
    schema = pa.schema([(name, arrow_type[kind]) for name, kind in MANIFEST_COLUMNS])
    table = pa.Table.from_pylist([{k: row.get(k) for k in names} for row in rows], schema=schema)
    with atomic_write(parquet_path) as tmp:
        pq.write_table(table, tmp)
    return csv_path, parquet_path


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a manifest CSV back into rows typed as :data:`MANIFEST_COLUMNS` say (empty cells -> None)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for raw in csv.DictReader(fh):
            rows.append({k: _typed(k, v) for k, v in raw.items() if k in _COLUMN_TYPES})
    return rows


def _typed(column: str, value: Any) -> Any:
    if value is None or value == "":
        return "" if column == "error" else None
    kind = _COLUMN_TYPES[column]
    return kind(float(value)) if kind is int else kind(value)


def previous_rows(out: Path) -> dict[str, dict[str, Any]]:
    """Rows of earlier runs into ``out``, by absolute input path: the journal (later lines win) when present,
    else the CSV manifest. A line torn by a crash is ignored."""
    rows: dict[str, dict[str, Any]] = {}
    journal = out / JOURNAL
    if journal.is_file():
        with open(journal, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s: skipping a torn line", journal)
                    continue
                if isinstance(row, dict) and row.get("input"):
                    rows[str(row["input"])] = row
    elif (out / MANIFEST_CSV).is_file():
        for row in read_manifest(out / MANIFEST_CSV):
            if row.get("input"):
                rows[str(row["input"])] = row
    return rows


def already_done(
    row: Mapping[str, Any] | None,
    name: str,
    model_sha256: str,
    *,
    overlay: bool,
    report: bool,
    mask_format: str,
) -> bool:
    """Whether a previous row stands for this case: ok, same name and model, the outputs asked for present."""
    if row is None or row.get("status") != "ok" or row.get("case") != name:
        return False
    if row.get("model_sha256") != model_sha256:
        return False
    wanted = {"auto": ["mask"], "nifti": ["mask"], "dicom-seg": ["dicom_seg"], "both": ["mask", "dicom_seg"]}
    kinds = wanted[mask_format] + (["report"] if report else []) + (["overlay"] if overlay else [])
    recorded = [k for k in ("mask", "dicom_seg", "report", "overlay") if row.get(k)]
    return all(row.get(k) for k in kinds) and all(Path(row[k]).is_file() for k in recorded)




def ordered_rows(rows: Mapping[str, dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    return [rows[k] for k in keys if k in rows]


def compact_journal(out: Path, rows: Mapping[str, Mapping[str, Any]]) -> None:
    from .files import atomic_write

    with atomic_write(out / JOURNAL) as tmp:
        lines = [json.dumps(r, allow_nan=False) + "\n" for r in rows.values()]
        tmp.write_text("".join(lines), encoding="utf-8")
