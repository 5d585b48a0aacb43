"""Mixed-precision INT8: which quantized nodes to leave in float, chosen by measured sensitivity.

Quantizing a whole network to int8 costs little accuracy on average, but a few nodes (the first convolution on the
raw CT, a decoder stage fed by a wide skip concatenation, the last stages before the logits) can move the argmax
of a thin structure such as a small tumor. This module finds those nodes on the calibration slices alone
(training data, never a held-out case):

1. the reference: the fp32 network's logits on the calibration slices;
2. the full INT8 network's logits, and for every candidate group (a node, or the convolutions that read one
   tensor), the logits of the INT8 network with just that group left in float ("leave one in float"); its
   sensitivity is how much agreement with fp32 that buys back, scored as the worse of foreground label agreement and the lowest per-class Dice (so that a small
   class, the tumor, weighs as much as the liver), softmax KL breaking ties;
3. greedily, in that order, groups go back to float until that score reaches a target or a cap on float nodes
   is hit.

Quantizing and evaluating are callables handed in by :func:`resunet_trt.onnx_precision.quantize_int8`, so this
module knows nothing of calibration: it ranks and chooses, for any network and any node names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx

logger = logging.getLogger("resunet_trt.export")

# Node types whose float fallback is tried: they carry the int8 weights (Conv, ConvTranspose) or merge a skip path
# (Add). ReLU and pooling have no weights and follow their producer's precision.
CANDIDATE_OP_TYPES = ("Conv", "ConvTranspose", "Add")
DEFAULT_TARGET_AGREEMENT = 0.998
DEFAULT_MAX_FLOAT_NODES = 24
# CPU runtimes that sensitivity is measured on, where installed; the worst of them counts.
RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class OutputAgreement:
    """How close a network's outputs are to the fp32 reference on the same inputs.

    Attributes:
        agreement: share of foreground pixels (fp32 or the other says not background) with the same argmax label.
            Background that both call background is left out: it is most of a CT plane and would hide the errors
            that matter (liver and tumor edges).
        pixel_agreement: share of all pixels with the same argmax label.
        kl: mean KL divergence KL(p_fp32 || p) of the softmax over classes, per pixel, in nats.
        class_dice: the lowest Dice, over the foreground classes, between the two label maps (a class that
            neither predicts counts as 1). Small classes (tumor) weigh as much here as large ones.
    """

    agreement: float
    pixel_agreement: float
    kl: float
    class_dice: float = 1.0

    @property
    def score(self) -> float:
        """What sensitivity ranking and the greedy choice maximise: the worse of ``agreement`` and
        ``class_dice``."""
        return min(self.agreement, self.class_dice)


@dataclass(frozen=True)
class NodeSensitivity:
    """What leaving one group of nodes in float (the rest int8) gives back.

    Attributes:
        nodes: the nodes' names in the graph.
        op_type: their ONNX op types, joined by "+".
        agreement, pixel_agreement, kl, class_dice: :class:`OutputAgreement` of that network against fp32.
        gain: its ``score`` minus the full INT8 network's (> 0: quantizing this node hurts).
    """

    nodes: tuple[str, ...]
    op_type: str
    agreement: float
    pixel_agreement: float
    kl: float
    class_dice: float
    gain: float


def output_agreement(reference: np.ndarray, other: np.ndarray) -> OutputAgreement:
    """Label agreement and softmax KL of ``other`` against ``reference``.

    Args:
        reference: fp32 logits (N, C, h, w), class 0 the background.
        other: logits of the same shape.

    Returns:
        The :class:`OutputAgreement`.

    Raises:
        ValueError: when the shapes differ or are not (N, C, h, w).
    """
    ref, oth = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if ref.ndim != 4 or ref.shape != oth.shape:
        raise ValueError(
            f"reference and other must be logits (N, C, h, w) of one shape, got {ref.shape} and {oth.shape}"
        )
    lr, lo = ref.argmax(1), oth.argmax(1)
    same = lr == lo
    foreground = (lr != 0) | (lo != 0)
    agreement = float(same[foreground].mean()) if foreground.any() else 1.0

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(1, keepdims=True)
        return x - np.log(np.exp(x).sum(1, keepdims=True))

    log_p, log_q = log_softmax(ref), log_softmax(oth)
    kl = float((np.exp(log_p) * (log_p - log_q)).sum(1).mean())
    dice = []
    for c in range(1, ref.shape[1]):
        a, b = lr == c, lo == c
        total = int(a.sum()) + int(b.sum())
        dice.append(1.0 if total == 0 else 2.0 * int((a & b).sum()) / total)
    return OutputAgreement(
        agreement=agreement,
        pixel_agreement=float(same.mean()),
        kl=max(kl, 0.0),
        class_dice=min(dice, default=1.0),
    )


def candidate_groups(model: onnx.ModelProto, exclude: Sequence[str] = ()) -> list[tuple[tuple[str, ...], str]]:
    """Groups of nodes whose float fallback is worth measuring, in graph order.

    Named nodes of :data:`CANDIDATE_OP_TYPES`, in two kinds of group, which may overlap:

    - convolutions that read the same tensor (a residual block's first convolution and its 1x1 shortcut, both
      reading the decoder's skip concatenation): a runtime may quantize that shared tensor once for all its
      readers (OpenVINO aligns the scales of a Concat's inputs), so leaving one reader in float changes nothing;
    - a residual Add with the convolutions that feed it (the block's sum and its two branches): the sum of two
      int8 branches is where the error of a block adds up.

    Args:
        model: the fp32 graph that is quantized.
        exclude: names already left in float (the logits convolution).

    Returns:
        ``(names, op_types)`` pairs, ``op_types`` the group's op types joined by "+".
    """
    skip = set(exclude)
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    producers = {out: n for n in model.graph.node for out in n.output}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        if n.op_type not in CANDIDATE_OP_TYPES or not n.name or n.name in skip:
            continue
        if n.op_type in ("Conv", "ConvTranspose"):
            groups.setdefault(f"reads:{n.input[0]}", []).append(n)
            continue
        # A residual sum with the convolutions that feed it: with only the Add in float, both its inputs are
        # still quantized as those convolutions' outputs.
        feeding = [producers[t] for t in n.input if t in producers]
        members = [m for m in feeding if m.op_type in ("Conv", "ConvTranspose") and m.name not in skip]
        groups[f"block:{n.name}"] = sorted([*members, n], key=lambda m: order[m.name])
    return [(tuple(n.name for n in g), "+".join(n.op_type for n in g)) for g in groups.values()]


def check_float_nodes(float_nodes: object, model: onnx.ModelProto) -> str | list[str]:
    """Validate a ``float_nodes`` argument against a graph.

    Args:
        float_nodes: ``"auto"``, ``"none"`` or ``None``, or a sequence of node names (a string with commas is
            split).
        model: the graph whose node names are valid.

    Returns:
        ``"auto"``, or the list of names (empty for none).

    Raises:
        TypeError: when ``float_nodes`` is neither a string, None nor a sequence of strings.
        ValueError: when a name is not a node of ``model``.
    """
    if float_nodes is None:
        return []
    if isinstance(float_nodes, str):
        text = float_nodes.strip()
        if text.lower() == "auto":
            return "auto"
        if text.lower() in ("none", ""):
            return []
        names = [s.strip() for s in text.split(",") if s.strip()]
    elif isinstance(float_nodes, Sequence) and all(isinstance(s, str) for s in float_nodes):
        names = list(float_nodes)
    else:
        raise TypeError(
            "float_nodes must be 'auto', 'none', None or a sequence of node names, "
            f"got {type(float_nodes).__name__}"
        )
    known = {n.name for n in model.graph.node if n.name}
    unknown = [s for s in names if s not in known]
    if unknown:
        raise ValueError(
            f"float_nodes must name nodes of the graph, got unknown {', '.join(repr(s) for s in unknown)} "
            f"(the graph has {len(known)} named nodes, e.g. {', '.join(sorted(known)[:3])})"
        )
    return names


Quantize = Callable[[Sequence[str]], "str | os.PathLike[str]"]
Evaluate = Callable[["str | os.PathLike[str]"], OutputAgreement]


def rank_sensitivity(
    candidates: Sequence[tuple[Sequence[str], str]],
    quantize: Quantize,
    evaluate: Evaluate,
    *,
    always_float: Sequence[str] = (),
    baseline: OutputAgreement | None = None,
) -> list[NodeSensitivity]:
    """Rank node groups by how much leaving each alone in float (the rest int8) improves agreement with fp32.

    Args:
        candidates: ``(names, op_types)`` pairs, e.g. from :func:`candidate_groups`.
        quantize: makes an INT8 file with the given node names left in float, returns its path.
        evaluate: scores a file against fp32 on the calibration slices.
        always_float: names left in float in every trial (the logits convolution).
        baseline: the full INT8 network's score (measured here when not given).

    Returns:
        One :class:`NodeSensitivity` per candidate group, most sensitive first (largest score gain, then lowest KL).
    """
    if baseline is None:
        baseline = evaluate(quantize(list(always_float)))
    ranked = []
    for i, (names, op_type) in enumerate(candidates):
        score = evaluate(quantize([*always_float, *names]))
        ranked.append(
            NodeSensitivity(
                nodes=tuple(names),
                op_type=op_type,
                agreement=score.agreement,
                pixel_agreement=score.pixel_agreement,
                kl=score.kl,
                class_dice=score.class_dice,
                gain=score.score - baseline.score,
            )
        )
        logger.debug("sensitivity %d/%d %s: agreement %.5f class Dice %.5f kl %.5f", i + 1, len(candidates),
                     "+".join(names), score.agreement, score.class_dice, score.kl)
    ranked.sort(key=lambda s: (-s.gain, s.kl))
    return ranked


def choose_float_nodes(
    ranking: Sequence[NodeSensitivity],
    quantize: Quantize,
    evaluate: Evaluate,
    *,
    always_float: Sequence[str] = (),
    target: float = DEFAULT_TARGET_AGREEMENT,
    max_nodes: int = DEFAULT_MAX_FLOAT_NODES,
    baseline: OutputAgreement | None = None,
) -> tuple[list[str], list[dict[str, float | str | int]]]:
    """Leave the most sensitive groups in float, one at a time, until the score against fp32 reaches ``target``.

    A group is kept in float only if adding it raises the score (or lowers KL at an equal score); groups with no
    measured gain alone are not tried, nor groups that would take the float nodes past ``max_nodes``.

    Args:
        ranking: from :func:`rank_sensitivity`, most sensitive first.
        quantize, evaluate: as for :func:`rank_sensitivity`.
        always_float: names left in float whatever happens (not counted in ``max_nodes``).
        target: :attr:`OutputAgreement.score` to reach, in (0, 1].
        max_nodes: at most this many chosen nodes (not groups), >= 0.
        baseline: the full INT8 network's score (measured here when not given).

    Returns:
        (the chosen names, most sensitive first; one record per step: nodes, agreement, class Dice, kl, kept).

    Raises:
        ValueError: on a bad ``target`` or ``max_nodes``.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 0:
        raise ValueError(f"max_nodes must be an int >= 0, got {max_nodes!r}")
    current = baseline if baseline is not None else evaluate(quantize(list(always_float)))
    chosen: list[str] = []
    steps: list[dict[str, float | str | int]] = []
    for node in ranking:
        if current.score >= target or node.gain <= 0.0:
            break
        new = [n for n in node.nodes if n not in chosen]
        if not new or len(chosen) + len(new) > max_nodes:
            continue
        score = evaluate(quantize([*always_float, *chosen, *new]))
        kept = score.score > current.score or (score.score == current.score and score.kl < current.kl)
        steps.append({"nodes": "+".join(node.nodes), "agreement": score.agreement, "class_dice": score.class_dice,
                      "kl": score.kl, "kept": int(kept)})
        logger.info("float %s: agreement %.5f, class Dice %.5f (kl %.5f)%s", "+".join(node.nodes), score.agreement,
                    score.class_dice, score.kl, "" if kept else ", no gain: stays int8")
        if kept:
            chosen.extend(new)
            current = score
    return chosen, steps


def sensitivity_record(ranking: Sequence[NodeSensitivity], top: int = 10) -> list[dict[str, object]]:
    """The ``top`` most sensitive groups as plain dicts (for the ONNX metadata)."""
    return [
        {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(s).items()} for s in ranking[:top]
    ]


def available_runtimes() -> tuple[str, ...]:
    """The CPU runtimes of :data:`RUNTIMES` that are installed (ONNX Runtime always is: it quantizes)."""
    import importlib.util

    return tuple(r for r in RUNTIMES if r == "onnxruntime" or importlib.util.find_spec(r) is not None)


def onnx_logits(
    path: str | os.PathLike[str], batches: Sequence[np.ndarray], runtime: str = "onnxruntime"
) -> np.ndarray:
    """Run an ONNX file on the CPU on batches and stack the first output.

    Args:
        path: the .onnx file (one input).
        batches: (n, K, h, w) float32 arrays.
        runtime: ``"onnxruntime"`` or ``"openvino"`` (fp32 inference hint: a Q/DQ file runs int8, the rest fp32,
            as :mod:`resunet_trt.backends.openvino` runs it).

    Returns:
        float32 (N, C, h, w), N the total slice count.

    Raises:
        ValueError: on an unknown ``runtime``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(Path(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([np.asarray(compiled(b)[0]) for b in batches]).astype(np.float32)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(Path(path)), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: b})[0] for b in batches]).astype(np.float32)


def worst_agreement(
    reference: np.ndarray,
    path: str | os.PathLike[str],
    batches: Sequence[np.ndarray],
    runtimes: Sequence[str],
) -> OutputAgreement:
    """The lowest-scoring :class:`OutputAgreement` of one file against ``reference`` over ``runtimes``.

    The same Q/DQ file is not computed alike everywhere (ONNX Runtime fuses Q/DQ into integer kernels, OpenVINO
    turns it into FakeQuantize and moves scales around), so a float node is worth keeping if any runtime needs it.
    """
    scores = [output_agreement(reference, onnx_logits(path, batches, r)) for r in runtimes]
    return min(scores, key=lambda s: (s.score, -s.kl))
