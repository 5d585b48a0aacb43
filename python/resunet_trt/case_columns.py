"""The cells of a training case list (:func:`resunet_trt.datasets.read_case_list`): its columns, and how each
optional cell's text becomes a value. Every parser raises ValueError naming ``where`` (the file and entry)."""

from __future__ import annotations

CASE_LIST_COLUMNS = ("image", "label", "kind", "label_map", "spacing", "slices", "weight", "fold", "zero_hu")


def parse_label_map(text: str, where: str) -> tuple[tuple[int, int], ...]:
    """``"5:1 6:0"`` -> ((5, 1), (6, 0)): an organ map's values and the class (0/1/2) each becomes."""
    pairs = []
    for item in text.replace(",", " ").split():
        value, _, cls = item.partition(":")
        try:
            pair = (int(value), int(cls))
        except ValueError:
            raise ValueError(f"{where}: label_map must be 'value:class' pairs like '5:1', got {text!r}") from None
        if pair[1] not in (0, 1, 2):
            raise ValueError(f"{where}: label_map classes must be 0, 1 or 2, got {text!r}")
        pairs.append(pair)
    return tuple(pairs)


def parse_spacing(text: str, where: str) -> tuple[float, float, float]:
    """``"1.4 1.4 1.4"`` -> (dz, dy, dx) in mm, each in (0, 100)."""
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if len(values) != 3 or not all(0 < v < 100 for v in values):
        raise ValueError(f"{where}: spacing must be three sizes in mm 'dz dy dx', got {text!r}")
    return values  # type: ignore[return-value]


def parse_slices(text: str, where: str) -> tuple[int, int]:
    """``"42:51"`` -> (42, 51); either end may be left out (``":10"``, ``"30:"``)."""
    start, sep, stop = text.partition(":")
    try:
        out = (int(start) if start.strip() else 0, int(stop) if stop.strip() else 1 << 30)
    except ValueError:
        out = (0, 0)
    if not sep or out[0] < 0 or out[1] <= out[0]:
        raise ValueError(f"{where}: slices must be 'start:stop' with 0 <= start < stop, got {text!r}")
    return out


def parse_fold(text: str, where: str = "fold") -> tuple[int, int, bool]:
    """``"k/n"`` (only patient fold ``k`` of ``n``) or ``"!k/n"`` (every fold but ``k``) -> ``(k, n, keep)``."""
    body = text.strip()
    keep = not body.startswith("!")
    k, sep, n = body.lstrip("!").partition("/")
    try:
        out = (int(k), int(n), keep)
    except ValueError:
        out = (-1, 0, keep)
    if not sep or out[1] < 2 or not 0 <= out[0] < out[1]:
        raise ValueError(f"{where}: fold must be 'k/n' or '!k/n' with n >= 2 and 0 <= k < n, got {text!r}")
    return out


def parse_zero_hu(text: str, where: str) -> tuple[int, int]:
    """``"-1000:-100"`` -> (outside, inside): the HU that a slice set's clipped zeros stand for outside the body and
    inside it (each in -1024..0)."""
    outside, sep, inside = text.partition(":")
    try:
        out = (int(outside), int(inside))
    except ValueError:
        out = (1, 1)
    if not sep or not all(-1024 <= v <= 0 for v in out):
        raise ValueError(f"{where}: zero_hu must be 'outside:inside' HU in -1024..0 like '-1000:-100', got {text!r}")
    return out


__all__ = ["CASE_LIST_COLUMNS", "parse_fold", "parse_label_map", "parse_slices", "parse_spacing", "parse_zero_hu"]
