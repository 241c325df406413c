"""Benchmark: PGD-20 wall time against 20 bare forward+backward passes of the same restorer.

The overhead ratio (PGD / bare) is the attack's cost beyond the unavoidable gradient
computations (target: under 1.10). Both are measured in this run, best of --repeat.

Usage: python bench/bench_attack.py [--arch discnet] [--size small] [--batch 8] [--px 64] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from udcguard.attacks import ATTACKS  # noqa: E402
from udcguard.models import build_restorer, num_parameters  # noqa: E402
from udcguard.train.restorer import model_fn  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_of(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="discnet")
    ap.add_argument("--size", default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    model = build_restorer(args.arch, size=args.size).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(args.batch, 3, args.px, args.px, device=device)
    cond = torch.randn(args.batch, 5, device=device)
    f = model_fn(model, cond, device)

    def bare() -> None:
        ref = f(x).detach()
        for _ in range(args.steps):
            xi = x.clone().requires_grad_(True)
            loss = ((f(xi) - ref) ** 2).mean()
            torch.autograd.grad(loss, xi)

    attack = ATTACKS.get("pgd_linf")(f, eps=8 / 256, steps=args.steps)
    gen = torch.Generator(device="cpu").manual_seed(0)
    t_bare = best_of(bare, args.repeat, device)
    t_pgd = best_of(lambda: attack(x, generator=gen), args.repeat, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.arch}/{args.size} ({num_parameters(model) / 1e6:.2f}M params), "
          f"batch {args.batch} x 3 x {args.px} x {args.px}")
    print(f"bare: 1 forward + {args.steps} forward+backward: {t_bare:.3f} s")
    print(f"PGD-{args.steps} (udcguard, keep-best, random start): {t_pgd:.3f} s")
    print(f"overhead ratio PGD / bare: {t_pgd / t_bare:.3f} (target < 1.10)")


if __name__ == "__main__":
    main()
