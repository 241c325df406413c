"""Benchmark: DDIM-k against DDPM-from-t* purification, speed and fidelity on the same UNet.

For each sampler (DDPM: t* + 1 UNet calls; DDIM with k steps, eta 0, for every k in
--ddim-steps) on the same images and seeds, measured in this run: throughput (images/s,
best of --repeat) and the purified images' PSNR against the clean input (mean over images).
"Matched quality" is the smallest k whose PSNR is within --tol dB of DDPM's (or above it);
the line printed last is the speed ratio DDIM-k / DDPM there (target: >= 5x).

The PSNR only means something with a trained purifier (--purifier, a folder written by the
purifier stage); with a random-init UNet (the default) it checks that the bench runs.
Images: --inputs (a .pt or .npy array (N, 3, H, W) or (N, H, W, 3) in [0, 1]; the first
--batch are used, centre-cropped to --px) or smooth synthetic images.

Usage: python -m bench.bench_samplers [--purifier data/purifier] [--unet small] [--px 256]
           [--batch 4] [--t-star 100] [--ddim-steps 5,10,20,50] [--tile 128 --overlap 32]
           [--autocast bf16] [--channels-last] [--compile] [--device auto] [--repeat 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F


from udcguard.io.purifier_store import load_purifier
from udcguard.purify import Purifier, build_unet_preset, make_scheduler
from udcguard.purify import unet_calls


def load_images(path: str | None, n: int, px: int) -> torch.Tensor:
    """(n, 3, px, px) in [0, 1]: from ``path`` (centre crop) or smooth synthetic scenes."""
    if path is None:
        g = torch.Generator().manual_seed(0)
        lo = torch.rand(n, 3, 6, 6, generator=g)  # (n, 3, 6, 6)
        x = F.interpolate(lo, size=(px, px), mode="bicubic", align_corners=False)
        edges = (torch.rand(n, 1, 12, 12, generator=g) > 0.7).float()
        x = x + 0.2 * F.interpolate(edges, size=(px, px), mode="nearest")  # some sharp structure
        return x.clamp(0, 1)
    arr = torch.load(path) if path.endswith(".pt") else torch.from_numpy(np.load(path))
    x = arr.float()[:n]
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if h < px or w < px:
        raise SystemExit(f"{path}: images {h}x{w} smaller than --px {px}")
    top, left = (h - px) // 2, (w - px) // 2
    return x[..., top : top + px, left : left + px].clamp(0, 1).contiguous()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(1.0 / mse)).mean().item()


def timed(fn, repeat: int, device: torch.device) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--purifier", default=None, help="trained purifier folder; default: random-init --unet")
    ap.add_argument("--unet", default="small")
    ap.add_argument("--inputs", default=None)
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--t-star", type=int, default=100)
    ap.add_argument("--ddim-steps", default="5,10,20,50")
    ap.add_argument("--tol", type=float, default=0.1, help="dB below DDPM still counted as matched")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--overlap", type=int, default=None)
    ap.add_argument("--autocast", choices=["bf16", "fp16"], default=None)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.purifier:
        base = load_purifier(args.purifier, device=device)
        unet, sched, what = base.unet, base.scheduler, f"trained purifier {args.purifier}"
    else:
        torch.manual_seed(0)
        unet, sched = build_unet_preset(args.unet, sample_size=args.px).to(device).eval(), make_scheduler(1000)
        what = f"random-init UNet {args.unet} (PSNR not meaningful)"
    purifier = Purifier(unet, sched, channels_last=args.channels_last, autocast=args.autocast, compile=args.compile)
    x = load_images(args.inputs, args.batch, args.px).to(device)
    seeds = list(range(args.batch))
    ks = [k for k in (int(s) for s in args.ddim_steps.split(",")) if 1 <= k <= args.t_star]
    common = {"t_star": args.t_star, "seeds": seeds, "tile": args.tile, "overlap": args.overlap}
    runs = [("ddpm", {})] + [(f"ddim-{k}", {"sampler": "ddim", "steps": k}) for k in ks]
    for _, kw in runs:  # warm-up (and compilation) outside the timing, a short chain each
        purifier.purify(x[:1], **{**common, "t_star": min(args.t_star, 4), "seeds": seeds[:1]},
                        **({**kw, "steps": min(kw["steps"], 4)} if kw else {}))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {what} ({sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M); "
          f"{args.batch} images {args.px}x{args.px}; t*={args.t_star}; tile={args.tile}; "
          f"autocast={args.autocast}; channels_last={args.channels_last}; compile={args.compile}")
    rows = {}
    for label, kw in runs:
        sec, y = timed(lambda kw=kw: purifier.purify(x, **common, **kw), args.repeat, device)
        calls = unet_calls(args.t_star, sampler=kw.get("sampler", "ddpm"), steps=kw.get("steps"))
        rows[label] = (args.batch / sec, psnr(y.float(), x.float()))
        print(f"{label:>9}: {calls:4d} UNet calls  {rows[label][0]:9.3f} images/s  PSNR vs input {rows[label][1]:6.2f} dB")
    ref_speed, ref_psnr = rows["ddpm"]
    matched = next((lbl for lbl in rows if lbl != "ddpm" and rows[lbl][1] >= ref_psnr - args.tol), None)
    if matched is None:
        print(f"no DDIM k within {args.tol} dB of DDPM ({ref_psnr:.2f} dB); try larger --ddim-steps")
    else:
        ratio = rows[matched][0] / ref_speed
        print(f"matched quality: {matched} ({rows[matched][1]:.2f} dB vs DDPM {ref_psnr:.2f} dB), "
              f"speed ratio DDIM / DDPM {ratio:.1f}x ({'meets' if ratio >= 5 else 'misses'} the 5x target)")


if __name__ == "__main__":
    main()
