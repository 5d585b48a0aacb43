"""Dice + cross-entropy for background / liver / tumor, with a liver-only mode.

Dice is computed on the two nested regions that LiTS scores: *liver* = liver or tumor (labels >= 1, predicted
probability p_liver + p_tumor) and *tumor* (label 2, p_tumor); a batch-level soft Dice per region.

Samples whose labels only mark the liver (tumor not annotated: a tumor inside such a mask may be labelled liver)
use the merged class: cross-entropy of {background, liver or tumor} with log(p_liver + p_tumor), liver-region Dice
only, and no tumor term. So a tumor prediction inside their liver mask costs nothing, a tumor prediction outside
costs as much as a liver one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from resunet_trt._checks import reject_unknown_keys


@dataclass(frozen=True)
class LossConfig:
    """Loss weights.

    Attributes:
        dice_weight: weight of the mean soft Dice loss (1 - Dice) over the regions.
        ce_weight: weight of the cross-entropy.
        class_weights: cross-entropy weight of background, liver, tumor (full-label samples).
        tumor_dice_weight: weight of the tumor region inside the Dice term (liver region has weight 1).
        smooth: Dice smoothing constant (in voxels).
    """

    dice_weight: float = 1.0
    ce_weight: float = 1.0
    class_weights: tuple[float, float, float] = (1.0, 1.0, 3.0)
    tumor_dice_weight: float = 1.0
    smooth: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LossConfig:
        reject_unknown_keys(d, cls.__dataclass_fields__, "loss")
        d = dict(d)
        if "class_weights" in d:
            cw = tuple(float(v) for v in d["class_weights"])
            if len(cw) != 3:
                raise ValueError(f"loss.class_weights needs 3 values (background, liver, tumor), got {cw}")
            d["class_weights"] = cw
        return cls(**d)


def _soft_dice(prob: torch.Tensor, target: torch.Tensor, smooth: float) -> torch.Tensor:
    inter = (prob * target).sum()
    return (2.0 * inter + smooth) / (prob.sum() + target.sum() + smooth)


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, liver_only: torch.Tensor, cfg: LossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dice + CE for a batch.

    Args:
        logits: (N, 3, h, w) float.
        labels: (N, h, w) int64 in {0, 1, 2}.
        liver_only: (N,) bool, True where the sample's labels do not annotate real tumors: there 1 stands for
            liver or tumor, and 2 (a synthetic tumor) for tumor.
        cfg: weights.

    Returns:
        (scalar loss, dict of its parts as floats for logging).
    """
    logits = logits.float()
    logp = F.log_softmax(logits, dim=1)
    prob = logp.exp()
    full = ~liver_only
    parts: dict[str, float] = {}
    total = logits.new_zeros(())

    if cfg.ce_weight > 0:
        weights = torch.tensor(cfg.class_weights, dtype=logp.dtype, device=logp.device)
        ce_sum = logits.new_zeros(())
        w_sum = logits.new_zeros(())
        if full.any():
            lab = labels[full]
            nll = -logp[full].gather(1, lab[:, None])[:, 0]
            w = weights[lab]
            ce_sum = ce_sum + (nll * w).sum()
            w_sum = w_sum + w.sum()
        if liver_only.any():
            # Liver-only labels: 1 means "liver, maybe with an unannotated tumor", so a tumor prediction there
            # is not punished (log P(liver or tumor)); a 2 is a known tumor (synthetic) and scores as one.
            lab = labels[liver_only]
            lp = logp[liver_only]
            merged = torch.stack([lp[:, 0], torch.logsumexp(lp[:, 1:], dim=1)], 1)
            nll_merged = -merged.gather(1, lab.clamp(max=1)[:, None])[:, 0]
            nll_exact = -lp.gather(1, lab[:, None])[:, 0]
            nll = torch.where(lab == 2, nll_exact, nll_merged)
            w = weights[lab]
            ce_sum = ce_sum + (nll * w).sum()
            w_sum = w_sum + w.sum()
        ce = ce_sum / w_sum.clamp(min=1e-6)
        total = total + cfg.ce_weight * ce
        parts["ce"] = float(ce.detach())

    if cfg.dice_weight > 0:
        liver_prob = prob[:, 1] + prob[:, 2]
        dice_liver = _soft_dice(liver_prob, (labels >= 1).to(prob.dtype), cfg.smooth)
        dice_loss = 1.0 - dice_liver
        norm = 1.0
        parts["dice_liver"] = float(dice_liver.detach())
        if full.any() and cfg.tumor_dice_weight > 0:
            dice_tumor = _soft_dice(prob[full][:, 2], (labels[full] == 2).to(prob.dtype), cfg.smooth)
            dice_loss = dice_loss + cfg.tumor_dice_weight * (1.0 - dice_tumor)
            norm += cfg.tumor_dice_weight
            parts["dice_tumor"] = float(dice_tumor.detach())
        total = total + cfg.dice_weight * dice_loss / norm
    parts["loss"] = float(total.detach())
    return total, parts
