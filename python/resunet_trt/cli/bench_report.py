"""What ``resunet-bench`` reports: each model against the first, the machine it ran on, the on-screen table."""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from typing import Any

#: A run is flagged ``disturbed`` when other processes used more than this share of the machine's CPU time.
DISTURBED_OTHER_CPU = 0.10


def ratios(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model against the first: speed-up of the median wall time and of slices/s, Dice differences."""
    ok = [r for r in results if r["ok"]]
    if len(ok) < 2:
        return []
    base = ok[0]
    out = []
    for r in ok:
        row: dict[str, Any] = {
            "label": r["label"],
            "baseline": base["label"],
            "speedup_wall_median": base["wall_s"]["median"] / r["wall_s"]["median"]
            if r["wall_s"]["median"]
            else math.nan,
            "speedup_slices_per_s": r["slices_per_s"] / base["slices_per_s"]
            if base["slices_per_s"]
            else math.nan,
            "stage_speedup": {
                s: (base["stages"][s]["median"] / r["stages"][s]["median"])
                if r["stages"].get(s, {}).get("median")
                else None
                for s in base["stages"]
                if s in r["stages"]
            },
        }
        for key in ("liver_dice", "tumor_dice"):
            if key in r["accuracy_mean"] and key in base["accuracy_mean"]:
                row[f"{key}_minus_baseline"] = r["accuracy_mean"][key] - base["accuracy_mean"][key]
        out.append(row)
    return out






def device_description(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What ran the benchmark: the GPU's name and memory when a model ran on one, else the CPU."""
    desc: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    if any(str(r.get("device", "")).startswith("cuda") for r in results):
        try:
            import cupy as cp

            index = cp.cuda.runtime.getDevice()
            props = cp.cuda.runtime.getDeviceProperties(index)
            name = props["name"]
            desc["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            desc["gpu_memory_bytes"] = int(props["totalGlobalMem"])
            desc["compute_capability"] = f"{props['major']}.{props['minor']}"
        except Exception as exc:  # noqa: BLE001 - a description must not fail the run
            desc["gpu"] = f"unknown ({exc})"
    return desc


def _fmt_s(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def render(results: Sequence[dict[str, Any]], rel: Sequence[dict[str, Any]]) -> str:
    """The on-screen summary: per model the stage medians/p90, throughput and memory, then the ratios."""
    lines = []
    for r in results:
        if not r["ok"]:
            lines.append(f"[{r['label']}] FAILED: {r['error']}")
            continue
        lines.append(
            f"[{r['label']}] {r['backend']} on {r['device']} ({r['precision']}), {r['n_runs']} timed volume(s), "
            f"model opened in {_fmt_s(r['open_s'])}"
        )
        lines.append(f"  {'stage':<12} {'median':>10} {'p90':>10}")
        for stage, st in r["stages"].items():
            lines.append(f"  {stage:<12} {_fmt_s(st['median']):>10} {_fmt_s(st['p90']):>10}")
        lines.append(f"  {'wall':<12} {_fmt_s(r['wall_s']['median']):>10} {_fmt_s(r['wall_s']['p90']):>10}")
        lines.append(
            f"  {r['slices_per_s']:.1f} slices/s, {r['volumes_per_s']:.3f} volumes/s, "
            f"peak host memory {r['peak_host_mib']:.0f} MiB"
        )
        if r["disturbed_runs"]:
            lines.append(
                f"  WARNING: {r['disturbed_runs']} of {r['n_runs']} run(s) shared the CPU with other processes "
                f"(> {DISTURBED_OTHER_CPU:.0%} of its time): the times are slower than on an idle machine"
            )
        if r["gpu_memory"]:
            gm = r["gpu_memory"]
            parts = [f"{k.replace('_bytes', '')} {v / 2**20:.0f} MiB" for k, v in gm.items()]
            lines.append("  GPU memory: " + ", ".join(parts))
        if r["accuracy_mean"]:
            acc = r["accuracy_mean"]
            lines.append(
                f"  liver Dice {acc['liver_dice']:.4f} IoU {acc['liver_iou']:.4f}, "
                f"tumor Dice {acc['tumor_dice']:.4f} IoU {acc['tumor_iou']:.4f} (mean over {len(r['accuracy'])} case(s))"
            )
    if rel:
        lines.append(f"relative to {rel[0]['baseline']}:")
        for row in rel:
            extra = ""
            if "liver_dice_minus_baseline" in row:
                extra = (
                    f", liver Dice {row['liver_dice_minus_baseline']:+.4f}, "
                    f"tumor Dice {row.get('tumor_dice_minus_baseline', math.nan):+.4f}"
                )
            lines.append(f"  {row['label']:<24} x{row['speedup_wall_median']:.2f} wall (median){extra}")
    return "\n".join(lines)
