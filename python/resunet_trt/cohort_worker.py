"""What runs on a cohort's Ray cluster: the reader task and the worker actor that holds one Segmenter."""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .results import STAGES

logger = logging.getLogger("resunet_trt.cohort")

def load_case(path: str) -> dict[str, Any]:
    """Read one case (run as a Ray task, apart from inference): its CTVolume, read seconds and identity.

    Returns:
        ``{"volume", "read_s", "input_sha256", "series_uid"}``, or ``{"error", ...}`` when it cannot be read
        (the message names the input).
    """
    from .engine import sha256_file
    from .io import load_ct
    from .inputs import name_file

    p = Path(path)
    out: dict[str, Any] = {"input_sha256": "", "series_uid": ""}
    t0 = time.perf_counter()
    try:
        volume = load_ct(p)
        out["read_s"] = time.perf_counter() - t0
        out["volume"] = volume
        out["series_uid"] = str(volume.meta.get("series_uid", "")) if p.is_dir() else ""
    except Exception as exc:  # noqa: BLE001 - a bad case becomes a failed row, not a failed run
        out["error"] = str(name_file(exc, path))
    if p.is_file():
        with contextlib.suppress(OSError):
            out["input_sha256"] = sha256_file(p)
    return out


class CohortWorker:
    """One Segmenter (the model loaded once) that segments cases and writes their outputs (a Ray actor).

    Args:
        segmenter: keyword arguments of :class:`resunet_trt.segmenter.Segmenter`.
        out_dir: the output folder (shared by every worker; names are unique per case).
        overlay: also write PNG overlays.
        report: also write JSON reports.
        mask_format: ``"auto"``, ``"nifti"``, ``"dicom-seg"`` or ``"both"`` (see
            :func:`resunet_trt.segmenter.mask_outputs`).
        name: the worker's name in the manifest.
    """

    def __init__(
        self,
        segmenter: Mapping[str, Any],
        out_dir: str,
        *,
        overlay: bool,
        report: bool,
        mask_format: str,
        name: str,
    ) -> None:
        from .segmenter import Segmenter

        self.segmenter = Segmenter(**dict(segmenter))
        self.model_sha256 = self.segmenter.model_sha256 or ""
        self.out_dir = Path(out_dir)
        self.overlay, self.report, self.mask_format, self.name = overlay, report, mask_format, name
        self.node = socket.gethostname()
        self.cases = 0

    def info(self) -> dict[str, Any]:
        """Where this worker runs and what model it loaded."""
        import ray

        return {
            "name": self.name,
            "node": self.node,
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": self.segmenter.device,
            "backend": self.segmenter.backend.name,
            "model_sha256": self.model_sha256,
            "pid": os.getpid(),
        }

    def segment(self, row: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
        """Segment one read case and write its outputs; returns its manifest row (status ok or failed)."""
        from .inputs import name_file

        row = dict(row)
        row.update(
            node=self.node,
            device=self.segmenter.device,
            backend=self.segmenter.backend.name,
            worker=self.name,
            model_sha256=self.model_sha256,
            # None, not "": a CSV cell cannot tell them apart.
            input_sha256=loaded.get("input_sha256") or None,
            series_uid=loaded.get("series_uid") or None,
        )
        try:
            if "error" in loaded:
                raise ValueError(loaded["error"])
            result = self.segmenter.segment(loaded["volume"])
            _exit_if_asked(row["input"])
            result.timings["read"] = float(loaded["read_s"])
            result.timings["total"] += result.timings["read"]
            outputs = self.segmenter.write_outputs(
                result,
                self.out_dir,
                row["case"],
                overlay=self.overlay,
                report=self.report,
                mask_format=self.mask_format,
            )
        except Exception as exc:  # noqa: BLE001 - recorded in the row, the run goes on
            row.update(status="failed", error=str(name_file(exc, row["input"])))
            logger.error("%s", row["error"])
        else:
            row.update(
                status="ok",
                error="",
                liver_ml=float(result.liver_volume_ml),
                tumor_ml=float(result.tumor_volume_ml),
                tumor_burden=float(result.tumor_burden),
                lesion_count=len(result.lesions),
                **{f"{k}_s": float(result.timings.get(k, 0.0)) for k in (*STAGES, "total")},
                **{kind: str(p) for kind, p in outputs.items()},
            )
            self.cases += 1
        row["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return row


#: Fault injection for tests of worker loss: ``"<text>|<marker file>"`` makes a worker exit abruptly (as if
#: killed) once it has segmented a case whose input path contains ``<text>``, before writing anything; once:
#: the marker file records that it did.
EXIT_ONCE_ENV = "RESUNET_COHORT_EXIT_ONCE"


def _exit_if_asked(input_path: str) -> None:
    spec = os.environ.get(EXIT_ONCE_ENV, "")
    text, _, marker = spec.partition("|")
    if text and marker and text in input_path and not os.path.exists(marker):
        Path(marker).touch()
        logger.warning("%s=%r: this worker exits now, on %s", EXIT_ONCE_ENV, spec, input_path)
        time.sleep(0.5)  # as a real crash would, long after the previous case's reply went out
        os._exit(1)
