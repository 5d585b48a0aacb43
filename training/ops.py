"""The library ops the trainer uses, in one place: CT/label reading, preprocessing and logits -> labels.

Each call goes to the package implementation (``resunet_trt.io``, ``resunet_trt.kernels``) so that training sees
exactly what inference sees. Where the installed package lacks one of them (an older or partial build), a
reference implementation of the same contract is used, with a logged warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(what: str, exc: BaseException) -> None:
    if what not in _warned:
        _warned.add(what)
        logger.warning("%s is not available (%s); using the trainer's reference implementation", what, exc)


def load_ct(path: str | Path) -> Any:
    """``resunet_trt.io.load_ct``: a CTVolume with ``hu`` int16 (D, H, W) canonical, ``spacing`` (dz, dy, dx)."""
    try:
        from resunet_trt.io import load_ct as _load_ct
    except ImportError as exc:
        _warn_once("resunet_trt.io", exc)
        return _reference_load_ct(path)
    return _load_ct(path)


def load_label(path: str | Path, like: Any) -> np.ndarray:
    """``resunet_trt.io.load_label``: uint8 (D, H, W) in ``like``'s canonical grid."""
    try:
        from resunet_trt.io import load_label as _load_label
    except ImportError as exc:
        _warn_once("resunet_trt.io", exc)
        return _reference_load_label(path, like)
    return _load_label(path, like=like)


def preprocess(hu: np.ndarray, *, window: tuple[float, float], out_size: tuple[int, int], context: int,
               dtype: str = "float16") -> np.ndarray:
    """``resunet_trt.kernels.preprocess`` on a whole (D, H, W) volume -> (D, K, h, w)."""
    try:
        from resunet_trt.kernels import preprocess as _preprocess
    except ImportError as exc:
        _warn_once("resunet_trt.kernels.preprocess", exc)
        return _reference_preprocess(hu, window=window, out_size=out_size, context=context, dtype=dtype)
    return np.asarray(_preprocess(hu, window=tuple(window), out_size=tuple(out_size), context=context, dtype=dtype))


def logits_to_labels(logits: np.ndarray, *, out_size: tuple[int, int]) -> np.ndarray:
    """``resunet_trt.kernels.logits_to_labels``: (N, C, h, w) float -> uint8 (N, H, W)."""
    try:
        from resunet_trt.kernels import logits_to_labels as _l2l
    except ImportError as exc:
        _warn_once("resunet_trt.kernels.logits_to_labels", exc)
        return _reference_logits_to_labels(logits, out_size=out_size)
    return np.asarray(_l2l(np.ascontiguousarray(logits, dtype=np.float32), out_size=tuple(out_size)))


# ---- reference implementations of the contracts in TEAM.md --------------------------------------------------


class _Volume:
    def __init__(self, hu: np.ndarray, spacing: tuple[float, float, float], affine: np.ndarray, source: Path) -> None:
        self.hu, self.spacing, self.affine, self.source = hu, spacing, affine, source


def _canonical(img: Any) -> tuple[np.ndarray, Any]:
    """Reorient a NIfTI image to canonical (D inf->sup, H ant->post, W right->left) and return (D, H, W) data."""
    import nibabel as nib

    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(("L", "P", "S"))
    )
    data = nib.orientations.apply_orientation(np.asanyarray(img.dataobj), ornt)
    affine = img.affine @ nib.orientations.inv_ornt_aff(ornt, img.shape[:3])
    return np.ascontiguousarray(data.transpose(2, 1, 0)), affine


def _reference_load_ct(path: str | Path) -> _Volume:
    import nibabel as nib

    path = Path(path)
    img = nib.load(str(path))
    if len(img.shape) != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {img.shape}")
    data, affine = _canonical(img)
    hu = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    # canonical voxel index (d, h, w) -> world: permute the (x, y, z) columns
    aff = affine.copy()
    aff[:, :3] = affine[:, [2, 1, 0]]
    return _Volume(hu, spacing, aff, path)


def _reference_load_label(path: str | Path, like: Any) -> np.ndarray:
    import nibabel as nib

    path = Path(path)
    img = nib.load(str(path))
    if len(img.shape) != 3:
        raise ValueError(f"{path}: expected a 3D label, got shape {img.shape}")
    data, _ = _canonical(img)
    if data.shape != like.hu.shape:
        raise ValueError(f"{path}: label shape {data.shape} differs from image shape {like.hu.shape}")
    return np.rint(data).astype(np.uint8)


def _reference_preprocess(hu: np.ndarray, *, window: tuple[float, float], out_size: tuple[int, int],
                          context: int, dtype: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    lo, hi = window
    x = (np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)
    t = F.interpolate(torch.from_numpy(x)[:, None], size=tuple(out_size), mode="bilinear", align_corners=False)[:, 0]
    d = t.shape[0]
    half = context // 2
    idx = np.clip(np.arange(d)[:, None] + np.arange(-half, half + 1)[None, :], 0, d - 1)
    return t.numpy()[idx].astype(dtype)


def _reference_logits_to_labels(logits: np.ndarray, *, out_size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    up = F.interpolate(t, size=tuple(out_size), mode="bilinear", align_corners=False)
    return up.argmax(1).to(torch.uint8).numpy()
