"""``resunet-build``: build a TensorRT engine (.plan + .plan.json sidecar) from one of our ONNX files.

    resunet-build model.int8.onnx -o model.int8.plan --min-batch 1 --opt-batch 16 --max-batch 32 \\
        --workspace-gb 4 --timing-cache trt.cache

The engine's precision is the ONNX's (fp32, fp16 or int8 Q/DQ): the network is built strongly typed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resunet-build",
        description="Build a strongly typed TensorRT engine from a resunet-trt ONNX file (fp32, fp16 or int8 Q/DQ).",
    )
    p.add_argument("onnx", type=Path, help="the .onnx file (from resunet_trt.export)")
    p.add_argument("-o", "--output", type=Path, help="the .plan to write (default: the ONNX name with .plan)")
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch of the profile (default 1)")
    p.add_argument("--opt-batch", type=int, default=8, help="batch TensorRT tunes for (default 8)")
    p.add_argument("--max-batch", type=int, default=32, help="largest batch of the profile (default 32)")
    p.add_argument(
        "--workspace-gb", type=float, default=4.0, help="workspace memory limit in GiB (default: %(default)s)"
    )
    p.add_argument("--timing-cache", type=Path, help="timing cache file, read if present and written after")
    p.add_argument("--device", default="cuda:0", help="CUDA device (default cuda:0)")
    p.add_argument("-v", "--verbose", action="store_true", help="TensorRT's verbose log")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from ..engine import EngineBuildError, build_engine, sidecar_path

    output = args.output if args.output is not None else args.onnx.with_suffix(".plan")
    try:
        plan = build_engine(
            args.onnx,
            output,
            min_batch=args.min_batch,
            opt_batch=args.opt_batch,
            max_batch=args.max_batch,
            workspace_gb=args.workspace_gb,
            timing_cache=args.timing_cache,
            device=args.device,
            verbose=args.verbose,
        )
    except (ImportError, FileNotFoundError, ValueError, TypeError, EngineBuildError, RuntimeError) as exc:
        print(f"resunet-build: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, TypeError, FileNotFoundError)) else 1
    print(f"engine: {plan}")
    print(f"sidecar: {sidecar_path(plan)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
