"""What the pipeline hands out: :class:`Result` per volume, :class:`FileOutcome` per input file.

The report (:mod:`resunet_trt.report`) and the overlay (:mod:`resunet_trt.overlay`) read these; this module imports
neither at load time, so nothing that draws or writes a result depends on the pipeline that made it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .io import CTVolume
    from .report import Lesion

__all__ = ["STAGES", "FileOutcome", "Result"]

#: Stage names of :attr:`Result.timings`, in pipeline order.
STAGES = ("read", "upload", "preprocess", "infer", "decode", "postprocess", "download", "write")


@dataclass
class Result:
    """What :meth:`Segmenter.segment` returns for one volume.

    Attributes:
        labels: uint8 (D, H, W), 0 background, 1 liver, 2 tumor, in the grid of :attr:`volume` (the canonical
            orientation; ``io.save_mask(path, labels, like=volume)`` writes it in the file's own geometry).
        volume: the CTVolume that was segmented.
        lesions: one :class:`resunet_trt.report.Lesion` per tumor component, largest first.
        liver_volume_ml: volume of liver including tumor (labels >= 1), mL.
        tumor_volume_ml: volume of tumor (label 2), mL.
        tumor_burden: tumor volume / liver volume (0.0 when there is no liver).
        timings: seconds per stage, keys :data:`STAGES` (stages that did not run are 0.0); on a GPU the
            device stages come from CUDA events and the upload overlaps the compute, so their sum can exceed
            the wall time, which is in ``timings["total"]``; on the CPU preprocess and decode run beside the
            network, so they too can sum past ``timings["slabs_wall"]``, the wall time of those three stages.
        info: backend name, device, model precision, batch size.
    """

    labels: np.ndarray
    volume: CTVolume
    lesions: list[Lesion]
    liver_volume_ml: float
    tumor_volume_ml: float
    tumor_burden: float
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    info: dict[str, Any] = field(default_factory=dict)

    def to_report(self, *, case: str | None = None) -> dict[str, Any]:
        """The JSON-ready lesion report of this case (see :func:`resunet_trt.report.build_report`)."""
        from .report import build_report

        return build_report(self, case=case)

    @property
    def warnings(self) -> list[str]:
        """Why this result is physically implausible (:func:`resunet_trt.report.plausibility_warnings`)."""
        from .report import plausibility_warnings

        return plausibility_warnings(self.liver_volume_ml, self.volume.spacing)

    def __repr__(self) -> str:
        return (
            f"Result(labels={_array_summary(self.labels)}, source={getattr(self.volume, 'source', None)!r}, "
            f"spacing={tuple(round(float(s), 4) for s in self.volume.spacing)}, "
            f"liver_volume_ml={self.liver_volume_ml:.1f}, tumor_volume_ml={self.tumor_volume_ml:.1f}, "
            f"tumor_burden={self.tumor_burden:.4f}, lesions={len(self.lesions)}, "
            f"total_s={self.timings.get('total', 0.0):.2f}, warnings={len(self.warnings)})"
        )


@dataclass
class FileOutcome:
    """The fate of one input of :meth:`Segmenter.segment_files`.

    Attributes:
        path: the input as given.
        ok: True when the mask (and the requested report/overlay) were written.
        error: the reason it failed (names the file), else None.
        outputs: kind (``"mask"``, ``"report"``, ``"overlay"``) -> written path.
        result: the Result, or None when the case failed (or ``keep_results=False``).
        summary: the case's JSON-ready report (:meth:`Result.to_report`), small enough to keep for many cases;
            None when the case failed.
    """

    path: Path
    ok: bool
    error: str | None = None
    outputs: dict[str, Path] = field(default_factory=dict)
    result: Result | None = None
    summary: dict[str, Any] | None = None

    def __repr__(self) -> str:
        parts = [f"path={os.fspath(self.path)!r}", f"ok={self.ok}"]
        if self.error is not None:
            parts.append(f"error={self.error!r}")
        parts.append(f"outputs={ {kind: p.name for kind, p in self.outputs.items()} }")
        if self.summary is not None:
            keys = ("case", "liver_volume_ml", "tumor_volume_ml", "lesion_count")
            brief = {k: self.summary[k] for k in keys if k in self.summary}
            brief["warnings"] = len(self.summary.get("warnings", ()))
            parts.append(f"summary={brief}")
        parts.append(f"result={self.result!r}")
        return f"FileOutcome({', '.join(parts)})"


def _array_summary(a: Any) -> str:
    """``uint8(33, 64, 64)``: what a repr shows of an array instead of its values."""
    shape = getattr(a, "shape", None)
    dtype = getattr(a, "dtype", None)
    if shape is None or dtype is None:
        return type(a).__name__
    return f"{np.dtype(dtype).name}{tuple(int(n) for n in shape)}"
