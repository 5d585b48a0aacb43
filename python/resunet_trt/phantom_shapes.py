"""Drawing primitives of the CT phantom: implicit ellipsoids painted slab by slab, a [1, 2, 1] blur, and a bank
of Gaussian noise. Shapes live in normalised coordinates (u, v in [-1, 1] across W and H, t in [0, 1] along D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Ellipsoid", "Grid", "NoiseBank", "blur121", "paint"]


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in (u, v, t) with an optional smooth boundary modulation.

    Inside means ``((u-cu)/au)^2 + ((v-cv)/av)^2 + ((t-ct)/at)^2 <= 1 + lob(u, v, t)``, with
    ``lob = amp * sin(fu*u + pu) * cos(fv*v + pv) * cos(ft*t + pt)`` (separable, hence cheap to broadcast).
    ``at = inf`` makes a cylinder along D.
    """

    tissue: int
    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    only_on: int | None = None  # paint only where the tissue map already holds this id
    lob: tuple[float, float, float, float, float, float, float] | None = None  # amp, fu, pu, fv, pv, ft, pt

    def margin(self) -> float:
        return math.sqrt(1.0 + (abs(self.lob[0]) if self.lob else 0.0))

    def value(self, u: np.ndarray, v: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Implicit value (<= 0 inside) at broadcastable coordinate arrays."""
        cu, cv, ct = self.center
        au, av, at = self.semi
        val = ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 - 1.0
        if math.isfinite(at):
            val = val + ((t - ct) / at) ** 2
        if self.lob is not None:
            amp, fu, pu, fv, pv, ft, pt = self.lob
            val = val - amp * np.sin(fu * u + pu) * np.cos(fv * v + pv) * np.cos(ft * t + pt)
        return val


class Grid:
    """Normalised coordinates of one slab (with halo) and the bounding-box arithmetic."""

    def __init__(self, shape: tuple[int, int, int], d0: int, d1: int) -> None:
        depth, height, width = shape
        self.shape = shape
        self.d0 = d0
        self.t = ((np.arange(d0, d1, dtype=np.float32) + 0.5) / depth).astype(np.float32)
        self.v = ((np.arange(height, dtype=np.float32) + 0.5) / height * 2.0 - 1.0).astype(np.float32)
        self.u = ((np.arange(width, dtype=np.float32) + 0.5) / width * 2.0 - 1.0).astype(np.float32)

    @staticmethod
    def _range(lo: float, hi: float, n: int, to_index) -> tuple[int, int]:
        i0 = max(0, math.floor(to_index(lo)))
        i1 = min(n, math.ceil(to_index(hi)) + 1)
        return i0, i1

    def box(self, center: tuple[float, float, float], semi: tuple[float, float, float], margin: float):
        """Index slices (slab-relative) of the bounding box, or None when it misses the slab."""
        depth, height, width = self.shape
        (cu, cv, ct), (au, av, at) = center, semi
        w0, w1 = self._range(
            cu - au * margin, cu + au * margin, width, lambda x: (x + 1.0) * width / 2.0 - 0.5
        )
        h0, h1 = self._range(
            cv - av * margin, cv + av * margin, height, lambda x: (x + 1.0) * height / 2.0 - 0.5
        )
        n = self.t.size
        if math.isfinite(at):
            d0, d1 = self._range(ct - at * margin, ct + at * margin, depth, lambda x: x * depth - 0.5)
            d0, d1 = max(d0 - self.d0, 0), min(d1 - self.d0, n)
        else:
            d0, d1 = 0, n
        if w0 >= w1 or h0 >= h1 or d0 >= d1:
            return None
        return slice(d0, d1), slice(h0, h1), slice(w0, w1)


def paint(tissue: np.ndarray, grid: Grid, shape: Ellipsoid) -> None:
    box = grid.box(shape.center, shape.semi, shape.margin())
    if box is None:
        return
    sd, sh, sw = box
    inside = shape.value(grid.u[None, None, sw], grid.v[None, sh, None], grid.t[sd, None, None]) <= 0.0
    target = tissue[sd, sh, sw]
    if shape.only_on is not None:
        inside &= target == shape.only_on
    np.copyto(target, np.uint8(shape.tissue), where=inside)


def blur121(a: np.ndarray, axis: int) -> np.ndarray:
    """Unnormalised [1, 2, 1] filter along ``axis`` (sum of weights 4) with edge replication, in float32.

    Three array passes instead of five: the 1/4 of each axis is applied once, at the end, by the caller.
    """
    out = a + a
    n = a.shape[axis]
    if n == 1:
        return out + out
    lo = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], hi[axis] = slice(0, n - 1), slice(1, n)
    out[tuple(hi)] += a[tuple(lo)]
    out[tuple(lo)] += a[tuple(hi)]
    first = [slice(None)] * a.ndim
    last = [slice(None)] * a.ndim
    first[axis], last[axis] = slice(0, 1), slice(n - 1, n)
    out[tuple(first)] += a[tuple(first)]
    out[tuple(last)] += a[tuple(last)]
    return out


class NoiseBank:
    """Gaussian noise for whole slices, cut from a small bank at random offsets.

    Drawing 100 M normals costs seconds; a bank of 16 slices (padded by 32 pixels) costs a fraction of that.
    Each output slice takes one bank slice at a random (row, column) shift: its noise is white and Gaussian
    with the requested sigma, and two slices share values only in the rare case of the same slice and shift.
    """

    _SLICES = 16
    _PAD = 32

    def __init__(self, shape: tuple[int, int, int], sigma: float, rng: np.random.Generator) -> None:
        depth, height, width = shape
        k = min(self._SLICES, depth)
        self.height, self.width = height, width
        self.bank = rng.standard_normal((k, height + self._PAD, width + self._PAD), dtype=np.float32)
        self.bank *= np.float32(sigma)
        self.which = rng.integers(0, k, size=depth)
        self.shift = rng.integers(0, self._PAD + 1, size=(depth, 2))

    def add_to(self, hu: np.ndarray, d0: int) -> None:
        """Add noise to slices [d0, d0 + len(hu)) in place."""
        for i in range(hu.shape[0]):
            oy, ox = self.shift[d0 + i]
            hu[i] += self.bank[self.which[d0 + i], oy : oy + self.height, ox : ox + self.width]
