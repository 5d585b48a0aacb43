"""Training speed of the ResUNet: slices/s of one optimizer step (forward + backward + AdamW), with the inference
forward pass of the same batch as the baseline measured in the same run.

    PYTHONPATH=python python benchmarks/bench_training.py                      # default model, 256x256, batch 8
    PYTHONPATH=python python benchmarks/bench_training.py --plane 128 --batch 16 --device cuda --amp bf16

Prints the median over ``--repeats`` timed steps (after ``--warmup`` untimed ones) and writes a JSON record to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "python" / "resunet_trt").is_dir():
    sys.path.insert(0, str(ROOT / "python"))


def _time(fn, *, warmup: int, repeats: int, sync) -> list[float]:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--plane", type=int, default=256, help="plane size h = w (default 256)")
    p.add_argument("--batch", type=int, default=8, help="slices per step (default 8)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="autocast dtype on CUDA")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="model config field, e.g. base_width=16 (default: ResUNetConfig())")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)

    import torch
    from resunet_trt.config import build_info, machine_info, versions
    from resunet_trt.model import ResUNet, ResUNetConfig, count_parameters, gflops_per_slice

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    fields = ResUNetConfig().to_dict()
    for item in args.override:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--override: unknown model field {key!r}; known: {sorted(fields)}")
        fields[key] = type(fields[key])(value)
    cfg = ResUNetConfig.from_dict(fields)
    dev = torch.device(args.device)
    model = ResUNet(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    x = torch.rand(args.batch, cfg.in_channels, args.plane, args.plane, device=dev)
    y = torch.randint(0, cfg.num_classes, (args.batch, args.plane, args.plane), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            model(x)

    model.train()
    t_train = _time(train_step, warmup=args.warmup, repeats=args.repeats, sync=sync)
    model.eval()
    t_inf = _time(infer, warmup=args.warmup, repeats=args.repeats, sync=sync)
    train_sps = args.batch / statistics.median(t_train)
    infer_sps = args.batch / statistics.median(t_inf)
    gflops = gflops_per_slice(cfg, (args.plane, args.plane))
    record = {
        "benchmark": "training_step",
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev),
        "amp": args.amp,
        "threads": torch.get_num_threads(),
        "plane": args.plane,
        "batch": args.batch,
        "model_config": cfg.to_dict(),
        "parameters": count_parameters(model),
        "gflops_per_slice_forward": gflops,
        "train_slices_per_s": train_sps,
        "inference_slices_per_s": infer_sps,
        "train_vs_inference_ratio": train_sps / infer_sps,
        "train_step_s": t_train,
        "inference_s": t_inf,
        "machine": machine_info(),
        "versions": versions(),
        "build": build_info(),
    }
    print(f"model {cfg.widths} depth {cfg.depth}: {record['parameters']:,} parameters, {gflops:.2f} GFLOPs/slice "
          f"forward at {args.plane}x{args.plane}; {dev}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"training step (forward+backward+AdamW): {train_sps:.2f} slices/s (median of {args.repeats})")
    print(f"inference forward (baseline):          {infer_sps:.2f} slices/s; training/inference = "
          f"{train_sps / infer_sps:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    path = args.out / f"training_{dev.type}_{args.plane}_{stamp}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
