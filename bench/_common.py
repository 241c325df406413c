"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def sync(device: torch.device | None) -> None:
    """Wait for queued CUDA work (a no-op elsewhere), so that a timer measures the work itself."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(fn: Callable[[], object], repeat: int = 3, device: torch.device | None = None, *,
            warmup: bool = False) -> float:
    """Seconds of the fastest of ``repeat`` calls of ``fn`` (after one untimed call when ``warmup``):
    the minimum is the run least disturbed by other work on the machine."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup:
        fn()
    times = []
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)
