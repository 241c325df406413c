"""Benchmark: PSF simulation and UDC pair synthesis throughput.

Measured in one run, on this machine:
  * PSF simulation (default params.yaml optics, K x K RGB) in seconds per PSF;
  * pair formation (convolve a crop with its context, clip) in pairs/s with udcguard's
    batched real-FFT convolution vs a plain reference: scipy.signal.fftconvolve per
    channel on the same regions and PSFs (ratio > 1: udcguard is faster);
  * end-to-end synthesis (scene preparation + formation + lights) in pairs/s.

Usage: python -m bench.bench_synthesis [--params params.yaml] [--pairs 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.signal


from bench._common import best_of
from udcguard.config import load_params
from udcguard.degradation.dataset import build_scene_sources, scene_pairs
from udcguard.degradation.formation import PSFKernel, form_udc
from udcguard.degradation.synth import plan_split
from udcguard.optics.bank import build_psf_bank


def reference_form(region: np.ndarray, psf: np.ndarray, clip_max: float) -> np.ndarray:
    out = np.stack([scipy.signal.fftconvolve(region[..., c], psf[..., c], mode="same") for c in range(3)], -1)
    return np.clip(out, 0.0, clip_max).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--pairs", type=int, default=200)
    args = ap.parse_args()
    p = load_params(args.params)
    k, crop = p.psf.kernel_size, p.dataset.crop_px

    t_bank = best_of(lambda: build_psf_bank(p.psf, p.seed, Path(".")), repeat=2)
    bank = build_psf_bank(p.psf, p.seed, Path("."))
    psfs = [(e.name, e.psf) for e in bank]
    print(f"PSF bank: {len(bank)} PSFs of {k}x{k}x3 in {t_bank:.3f} s ({t_bank / len(bank):.3f} s/PSF)")

    rng = np.random.default_rng(0)
    side = crop + 2 * (k // 2)
    regions = [rng.random((side, side, 3)) ** 8 * 50 for _ in range(args.pairs)]
    kernels = [psfs[i % len(psfs)][1] for i in range(args.pairs)]
    cached = {id(q): PSFKernel(q) for q in kernels}  # as synthesis does: one kernel object per PSF
    t_ours = best_of(lambda: [form_udc(r, cached[id(q)], clip_max=p.formation.clip_max) for r, q in zip(regions, kernels)])
    t_ref = best_of(lambda: [reference_form(r, q, p.formation.clip_max) for r, q in zip(regions, kernels)])
    err = max(np.abs(form_udc(r, q)[0] - reference_form(r, q, 500.0)).max() for r, q in zip(regions[:5], kernels[:5]))
    print(f"formation ({side}x{side} region, crop {crop}): udcguard {args.pairs / t_ours:.0f} pairs/s, "
          f"scipy.signal.fftconvolve per channel {args.pairs / t_ref:.0f} pairs/s, "
          f"ratio {t_ref / t_ours:.2f}x (max abs diff {err:.2e})")

    sources = build_scene_sources(p.scenes)
    name = sorted(sources)[0]
    per_scene = max(1, args.pairs // 4)
    plans = plan_split("bench", [name], per_scene)
    t0 = time.perf_counter()
    n = sum(1 for _ in scene_pairs(sources[name], plans, psfs, seed=p.seed, scenes=p.scenes,
                                   dataset=p.dataset, formation=p.formation))
    t_e2e = time.perf_counter() - t0
    print(f"end-to-end ({name}, scene load + preparation + {n} pairs): {n / t_e2e:.0f} pairs/s")


if __name__ == "__main__":
    main()
