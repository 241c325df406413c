"""Benchmark: purification throughput against a plain loop over diffusers' DDPMScheduler.

udcguard's Purifier (per-image seeds, padding, batching) against the bare reference
loop (add_noise at t*, then unet + scheduler.step for t = t* .. 0) on the same UNet and
the same images; both in this run, best of --repeat. Ratio > 1: udcguard is faster.

Usage: python -m bench.bench_purify [--unet tiny] [--batch 16] [--px 64] [--t-star 100] [--device auto]
"""

from __future__ import annotations

import argparse

import torch


from bench._common import best_of
from udcguard.purify import Purifier, build_unet_preset, make_scheduler


def reference(unet, scheduler, x: torch.Tensor, t_star: int, gen: torch.Generator) -> torch.Tensor:
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    z = 2 * x - 1
    noise = torch.randn(z.shape, generator=gen, device=gen.device).to(z.device)
    z = scheduler.add_noise(z, noise, torch.tensor([t_star]))
    with torch.no_grad():
        for t in scheduler.timesteps[scheduler.timesteps <= t_star]:
            eps = unet(z, t).sample
            z = scheduler.step(eps, t, z, generator=gen).prev_sample
    return ((z + 1) / 2).clamp(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unet", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--t-star", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    unet = build_unet_preset(args.unet, sample_size=args.px).to(device).eval()
    scheduler = make_scheduler(1000)
    purifier = Purifier(unet, scheduler)
    x = torch.rand(args.batch, 3, args.px, args.px, device=device)
    seeds = list(range(args.batch))
    purifier.purify(x[:1], t_star=2, seeds=seeds[:1])  # warm-up
    t_ours = best_of(lambda: purifier.purify(x, t_star=args.t_star, seeds=seeds), args.repeat, device)
    t_ref = best_of(lambda: reference(unet, scheduler, x, args.t_star, torch.Generator().manual_seed(0)),
                    args.repeat, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; UNet {args.unet} ({sum(p.numel() for p in unet.parameters()) / 1e6:.2f}M), "
          f"{args.batch} images {args.px}x{args.px}, t*={args.t_star} ({args.t_star} UNet calls)")
    print(f"udcguard Purifier: {args.batch / t_ours:.2f} images/s")
    print(f"plain DDPMScheduler loop: {args.batch / t_ref:.2f} images/s")
    print(f"ratio (udcguard / plain): {t_ref / t_ours:.2f}x")


if __name__ == "__main__":
    main()
