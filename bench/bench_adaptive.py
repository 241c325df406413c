"""Benchmark: peak memory of one adaptive-full gradient vs the number of DDIM steps k.

One ``Calls.value_and_grad`` (mse against the clean output) on
``DefendedModel(restorer, purifier, mode="full", ddim_steps=k)``, with and without gradient
checkpointing, for k in --steps; prints peak(k_max) / peak(k_min) for both (target: ~1
with checkpointing; ~k_max / k_min without) and the growth per DDIM step (with
checkpointing: about one to two (B, 3, H, W) samples per step, held for the backward). The UNet is frozen (``requires_grad_(False)``),
as an attack would run it.

How the peak is measured (``--method``):

- "cuda" (default on a GPU): ``torch.cuda.max_memory_allocated`` during the gradient minus
  the memory allocated before it: every tensor the caching allocator hands out, backward
  recomputation included.
- "rss" (default on the CPU): each (k, checkpoint) in a fresh subprocess; peak resident set
  size (``ru_maxrss``) after the gradient minus the current RSS before it (after a warm-up
  UNet call), with glibc's ``MALLOC_MMAP_THRESHOLD_=16384`` so that freed tensors leave the
  RSS. Includes everything (the checkpoint's held inputs, recomputation in the backward)
  but also allocator noise of ~1 MiB: use a size where one UNet's activations are well
  above that.
- "graph": bytes of the tensors autograd saves for the backward, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` over the forward. Deterministic and
  device-free, but blind to what checkpoint segments hold internally (their inputs, one
  sample per step) and to the recomputation peak.

Usage: python -m bench.bench_adaptive [--unet tiny] [--px 32] [--batch 1] [--t-star 16]
       [--steps 1,2,4,8] [--method auto|cuda|rss|graph] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
from torch import nn


from udcguard.attacks.adaptive import DefendedModel
from udcguard.attacks.base import Calls
from udcguard.attacks.objectives import objective
from udcguard.purify import Purifier, build_unet_preset, make_scheduler

MiB = 2**20


class Restorer(nn.Module):
    """x + Conv-ReLU-Conv(x), 16 channels: a stand-in restorer (its memory does not depend on k)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _setup(args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    unet = build_unet_preset(args.unet, args.px).to(device).eval().requires_grad_(False)
    purifier = Purifier(unet, make_scheduler(args.timesteps))
    restorer = Restorer().to(device).eval().requires_grad_(False)
    x = torch.rand(args.batch, 3, args.px, args.px, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        r = restorer(x)
        unet(2 * x - 1, torch.tensor(1, device=device))  # warm-up (kernels, allocator)
    return purifier, restorer, x, r


def _gradient(purifier, restorer, x, r, k: int, ckpt: bool, t_star: int) -> None:
    model = DefendedModel(restorer, purifier, t_star=t_star, mode="full", ddim_steps=k, checkpoint=ckpt, seed=0)
    Calls(model, objective("mse")).value_and_grad(x, r)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args: argparse.Namespace, device: torch.device, k: int, ckpt: bool) -> float:
    """Peak bytes of one gradient (this process)."""
    purifier, restorer, x, r = _setup(args, device)
    if args.method == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _gradient(purifier, restorer, x, r, k, ckpt, args.t_star)
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base)
    if args.method == "graph":
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            _gradient(purifier, restorer, x, r, k, ckpt, args.t_star)
        return float(total)
    base = _rss_bytes()
    _gradient(purifier, restorer, x, r, k, ckpt, args.t_star)
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--unet", default="tiny")
    ap.add_argument("--px", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--t-star", type=int, default=16)
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--method", default="auto", choices=["auto", "cuda", "rss", "graph"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "k,ckpt": one rss run
    args = ap.parse_args()
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.method == "auto":
        args.method = "cuda" if device.type == "cuda" else "rss"
    if args.child is not None:
        k, ckpt = args.child.split(",")
        print(json.dumps(measure(args, device, int(k), ckpt == "1")))
        return

    ks = [int(s) for s in args.steps.split(",")]
    print(f"unet={args.unet} px={args.px} batch={args.batch} t*={args.t_star} device={device} "
          f"method={args.method}")
    peaks: dict[tuple[int, bool], float] = {}
    for ckpt in (True, False):
        for k in ks:
            if args.method == "rss":  # a fresh process per point: ru_maxrss only grows
                cmd = [sys.executable, __file__, *sys.argv[1:], "--method", "rss", "--child", f"{k},{int(ckpt)}"]
                # glibc: serve every allocation >= 16 KiB by mmap, so that freed tensors
                # leave the RSS (no heap fragmentation in the peak)
                env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                peaks[k, ckpt] = float(out.strip().splitlines()[-1])
            else:
                peaks[k, ckpt] = measure(args, device, k, ckpt)
            print(f"  checkpoint={ckpt!s:5}  k={k:2d}  peak={peaks[k, ckpt] / MiB:9.3f} MiB")
    lo, hi = min(ks), max(ks)
    for ckpt in (True, False):
        ratio = peaks[hi, ckpt] / max(peaks[lo, ckpt], 1.0)
        per_step = (peaks[hi, ckpt] - peaks[lo, ckpt]) / max(hi - lo, 1) / MiB
        print(f"checkpoint={ckpt!s:5}: peak(k={hi}) / peak(k={lo}) = {ratio:.2f}   "
              f"growth {per_step:.3f} MiB per DDIM step")


if __name__ == "__main__":
    main()
