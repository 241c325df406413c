"""Benchmark: the cost of each defence per image, as a ratio to the undefended restorer.

One restorer forward (``none``) is the reference, measured in the same run; each defence is
what it costs to produce its scored output for one image: ``purify`` (one purification at t*
with the default profile's sampler, then the restorer), ``purify-avg`` (K purifications and K
restorations, then the per-pixel mean: ``evaluate.draw_average``). ``purify+finetune`` costs
what ``purify`` costs (another restorer of the same size). UNet calls per image are printed
next to the times (as ``unet_calls`` in metrics.csv). Channels-last as in the default profile.
Weights are random: the cost does not depend on them.

Usage: python -m bench.bench_defences [--arch discnet] [--size small] [--unet tiny] [--batch 8] [--px 64]
                                      [--t-star 40] [--sampler ddim] [--ddim-steps 5] [--draws 2] [--repeat 3]
"""

from __future__ import annotations

import argparse

import torch

from bench._common import best_of
from udcguard.evaluation import reduce_draws
from udcguard.models import build_restorer
from udcguard.purify import Purifier, build_unet_preset, make_scheduler
from udcguard.purify.schedule import unet_calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="discnet")
    ap.add_argument("--size", default="small")
    ap.add_argument("--unet", default="tiny", help="purifier UNet preset")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--t-star", type=int, default=40)
    ap.add_argument("--sampler", default="ddim", choices=["ddim", "ddpm"])
    ap.add_argument("--ddim-steps", type=int, default=5)
    ap.add_argument("--draws", type=int, default=2, help="K of purify-avg (purify.seeds)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.draws < 1 or args.batch < 1:
        ap.error("--draws and --batch must be >= 1")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    nhwc = torch.channels_last
    model = build_restorer(args.arch, size=args.size, cond_dim=5).to(device).eval().requires_grad_(False)
    model.to(memory_format=nhwc)
    purifier = Purifier(build_unet_preset(args.unet, sample_size=args.px).to(device).eval(), make_scheduler(1000),
                        channels_last=True)
    x = torch.rand(args.batch, 3, args.px, args.px, device=device)
    cond = torch.randn(args.batch, 5, device=device)
    steps = max(1, min(args.ddim_steps, args.t_star)) if args.sampler == "ddim" else None
    opts = {"t_star": args.t_star, "sampler": args.sampler, "steps": steps}

    def restore(inp: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(inp, cond).clamp(0, 1)

    def purify(k: int) -> torch.Tensor:
        return purifier.purify(x, seeds=[k * 1_000_003 + i for i in range(args.batch)], **opts)

    def averaged() -> torch.Tensor:
        return reduce_draws([restore(purify(k)) for k in range(args.draws)], "mean")

    runs = {"none": lambda: restore(x), "purify": lambda: restore(purify(0)), "purify-avg": averaged}
    calls = unet_calls(args.t_star, sampler=args.sampler, steps=steps)
    per_image = {name: best_of(fn, args.repeat, device, warmup=True) / args.batch for name, fn in runs.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; restorer {args.arch}-{args.size}, purifier UNet {args.unet}; {args.batch} images "
          f"{args.px}x{args.px}; t* = {args.t_star}, {args.sampler}"
          + (f"-{steps}" if steps else "") + f"; purify-avg: K = {args.draws}")
    print(f"{'defence':<14}{'UNet calls':>11}{'ms / image':>12}{'x none':>9}")
    for d, sec in per_image.items():
        n = 0 if d == "none" else calls * (args.draws if d == "purify-avg" else 1)
        print(f"{d:<14}{n:>11}{1000 * sec:>12.2f}{sec / per_image['none']:>9.2f}")


if __name__ == "__main__":
    main()
