"""Benchmark: forward+backward throughput (images/s) of every registered restorer at 256 x 256.

One training-style step per batch: forward, L1 loss, backward (weights and input). The
reference, measured in the same run, is the plain U-Net of the same size preset; each row
prints its throughput and the ratio to that reference. Parameter counts are printed next to
it (``paper`` is the published configuration; on a CPU use ``--size small``).

Usage: python -m bench.bench_restorers [--size small] [--batch 2] [--px 256] [--repeat 3]
                                        [--arch discnet --arch uformer ...] [--device auto]
                                        [--amp] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch


from bench._common import best_of
from udcguard.models import RESTORERS, build_restorer, num_parameters

REFERENCE = "unet"


def throughput(arch: str, size: str, batch: int, px: int, repeat: int, device: torch.device, amp: bool) -> dict:
    """Best-of-``repeat`` images/s of forward+backward for one restorer."""
    torch.manual_seed(0)
    model = build_restorer(arch, size=size, cond_dim=5).to(device).train()
    x = torch.rand(batch, 3, px, px, device=device, requires_grad=True)
    gt = torch.rand(batch, 3, px, px, device=device)
    cond = torch.randn(batch, 5, device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=amp and device.type == "cuda"):
            loss = (model(x, cond) - gt).abs().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        x.grad = None

    best = best_of(step, repeat, device, warmup=True)  # warm-up: allocations, cuDNN autotuning
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"arch": arch, "size": size, "parameters": num_parameters(model), "seconds": best,
            "images_per_s": batch / best, "peak_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=("tiny", "small", "paper"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--arch", action="append", help="restorers to time (default: all registered)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    archs = args.arch or RESTORERS.names()
    for a in archs:
        RESTORERS.get(a)  # unknown names fail before any timing
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"device: {name}; size {args.size}; batch {args.batch} x 3 x {args.px} x {args.px}; "
          f"forward+backward, best of {args.repeat}")
    ref = throughput(REFERENCE, args.size, args.batch, args.px, args.repeat, device, args.amp)
    rows = []
    print(f"{'restorer':<10} {'params':>12} {'images/s':>10} {'vs unet':>8}"
          + (f" {'peak MiB':>9}" if device.type == "cuda" else ""))
    for arch in archs:
        row = ref if arch == REFERENCE else throughput(arch, args.size, args.batch, args.px, args.repeat,
                                                        device, args.amp)
        row["ratio_vs_unet"] = row["images_per_s"] / ref["images_per_s"]
        rows.append(row)
        peak = f" {row['peak_mib']:>9.0f}" if device.type == "cuda" else ""
        print(f"{arch:<10} {row['parameters']:>12,} {row['images_per_s']:>10.2f} {row['ratio_vs_unet']:>8.2f}{peak}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
