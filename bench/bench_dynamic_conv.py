"""Benchmark: DISCNet's dynamic convolution, shifted taps (ours) against the unfold form (released code).

Two measurements, each interleaved in the same run so that the machine's speed drifts out of the ratio:

1. the dynamic convolution alone, forward + backward (input and filter gradients), at the three
   scales of DISCNet-small on 64 px training crops (12 x 64², 24 x 32², 48 x 16² channels x pixels);
2. a whole DISCNet-small training step (forward, L1, backward, Adam) on a batch of 64 px crops, with
   ``dynamic_conv`` swapped between the two forms.

Each is timed in fp32 and under CPU bf16 autocast (the training default on a CPU with AMX), best of
``--repeat`` rounds of ``--iters`` steps. Prints ms and the ratio reference / ours (> 1: ours is faster).

Usage: python -m bench.bench_dynamic_conv [--batch 8] [--px 64] [--iters 10] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch


from udcguard.models import discnet
from udcguard.models.discnet import DISCNet, dynamic_conv, dynamic_conv_unfold

FORMS = {"taps (ours)": dynamic_conv, "unfold (reference)": dynamic_conv_unfold}


def best_ms(steps: dict[str, Callable[[], None]], iters: int, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` ms per call of each step; the forms alternate inside every round."""
    for step in steps.values():
        step()  # warm-up (oneDNN primitives, allocator)
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeat):
        for name, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(iters):
                step()
            best[name] = min(best[name], (time.perf_counter() - t0) / iters * 1000)
    return best


def op_steps(batch: int, px: int, nf: int, amp: bool) -> dict[str, Callable[[], None]]:
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if amp else torch.float32
    scales = [(nf * 2**s, px // 2**s) for s in range(3)]
    tensors = [(torch.randn(batch, c, h, h, generator=g).to(dtype).requires_grad_(),
                torch.randn(batch, c * 9, h, h, generator=g).to(dtype).requires_grad_()) for c, h in scales]

    def make(fn: Callable) -> Callable[[], None]:
        def step() -> None:
            sum(fn(f, w, 3).float().sum() for f, w in tensors).backward()
        return step
    return {name: make(fn) for name, fn in FORMS.items()}


def train_steps(batch: int, px: int, amp: bool) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    model = DISCNet(cond_dim=5, **DISCNet.presets["small"]).train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    g = torch.Generator().manual_seed(0)
    x, y, cond = torch.rand(batch, 3, px, px, generator=g), torch.rand(batch, 3, px, px, generator=g), torch.randn(batch, 5, generator=g)

    def make(fn: Callable) -> Callable[[], None]:
        def step() -> None:
            discnet.dynamic_conv = fn  # DISCNet._forward looks the function up in its module
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    out = model(x, cond)
                loss = (out.float() - y).abs().mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            finally:
                discnet.dynamic_conv = dynamic_conv
        return step
    return {name: make(fn) for name, fn in FORMS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    nf = DISCNet.presets["small"]["nf"]
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
          f"batch {args.batch} x {args.px} px, best of {args.repeat} x {args.iters}")
    print(f"{'workload':<34} {'taps ms':>9} {'unfold ms':>10} {'unfold/taps':>12}")
    for label, maker in (("dynamic conv fwd+bwd, 3 scales", lambda amp: op_steps(args.batch, args.px, nf, amp)),
                         ("DISCNet-small training step", lambda amp: train_steps(args.batch, args.px, amp))):
        for amp in (False, True):
            ms = best_ms(maker(amp), args.iters, args.repeat)
            ours, ref = ms["taps (ours)"], ms["unfold (reference)"]
            name = f"{label} ({'bf16' if amp else 'fp32'})"
            rows.append({"workload": name, "taps_ms": ours, "unfold_ms": ref, "ratio": ref / ours})
            print(f"{name:<34} {ours:9.1f} {ref:10.1f} {ref / ours:11.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "batch": args.batch, "px": args.px, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
