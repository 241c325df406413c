"""Benchmark: the attack stage on 1 vs 2 Dask worker processes (one torch thread each).

The same shard set (attack set x level x image range) runs through ``attack_restorer`` on a
local Dask cluster of 1, then 2 workers, in this run. Cluster start (LocalCluster up and the
workers importing the stage's modules) is timed apart from the stage itself; the ratio
t(1 worker) / t(2 workers) is printed without and with it. Sequential runs in this process
(1 torch thread, and cpu count threads) are printed for reference, and every run's outputs
are compared bit for bit with the first. Data: a small synthesized set; the restorer is randomly
initialised (saved in the model folder format), which costs the same as a trained one.
The load average is printed before and after (other processes share the cores).

Usage: python -m bench.bench_dask [--images 32] [--steps 20] [--batch 2] [--shard-images 4] [--size small]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PARAMS = {
    "seed": 0,
    "psf": {"kernel_size": 15, "code_dim": 3, "displays": [{"name": "toled", "layout": "toled"}]},
    "scenes": {"photos": True, "wallpapers": "off", "panoramas": "off", "max_side_px": 128},
    "dataset": {"crop_px": 64, "train": {"scene_fraction": 0.6, "pairs_per_scene": 8},
                "val": {"scene_fraction": 0.2, "pairs_per_scene": 1},
                "test": {"scene_fraction": 0.2, "pairs_per_scene": 1}},
    "restorers": {"unet": {"arch": "unet", "size": "small"}},
    "attack": {"split": "train", "device": "cpu", "attacks": {"pgd_linf": {"attack": "pgd_linf", "eps": [8]}}},
    "purify": {"t_star": 5, "selection": {"candidates": [0, 5], "attack": "pgd_linf"}},
    "adaptive": {"attack": "pgd_linf"},
    "finetune": {"t_stars": [5]},
}


def outputs(root: Path) -> tuple:
    """(sets as tensors, records minus timing) of one attack output folder."""
    import json

    from udcguard.io.datasets import load_inputs

    sets = {d.name: load_inputs(d)[0] for d in sorted(root.iterdir()) if (d / "manifest.json").exists()}
    recs = [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((root / "records.json").read_text())]
    return sets, recs


def same(a: tuple, b: tuple) -> bool:
    import torch

    return a[1] == b[1] and a[0].keys() == b[0].keys() and all(torch.equal(a[0][k], b[0][k]) for k in a[0])


def run_stage(params, data: Path, out: Path) -> float:
    from tasks.attack import attack_restorer

    t0 = time.perf_counter()
    attack_restorer(params, "unet", str(data), str(out))
    return time.perf_counter() - t0


def dask_run(params, data: Path, out: Path, workers: int, api_url: str) -> tuple[float, float]:
    """(cluster start incl. worker imports, stage time) on a fresh local cluster."""
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    env = {"PREFECT_API_URL": api_url, "DASK_LOGGING__DISTRIBUTED": "warning"}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      env=env) as cluster, Client(cluster) as client:
        client.run(__import__, "tasks.attack")  # workers import torch, prefect, udcguard once
        start = time.perf_counter() - t0
        p = params.model_copy(update={"parallel": params.parallel.model_copy(
            update={"runner": "dask", "address": cluster.scheduler_address, "workers": workers})})
        return start, run_stage(p, data, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--shard-images", type=int, default=4)
    ap.add_argument("--size", default="small")
    ap.add_argument("--skip-threaded", action="store_true", help="skip the sequential run on cpu count threads")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    os.environ.update({"PREFECT_HOME": str(tmp / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_LOGGING_LEVEL": "WARNING", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
                       "HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"})
    import torch
    import yaml
    from prefect.client.orchestration import get_client

    from flows.synthesize import synthesize
    from tasks.shards import cpu_count, shard_ranges
    from udcguard.config import params_from_dict
    from udcguard.io.checkpoints import save_model
    from udcguard.models import build_restorer, restorer_spec

    raw = dict(PARAMS, restorers={"unet": {"arch": "unet", "size": args.size}})
    raw["attack"] = {**raw["attack"], "max_images": args.images, "batch_size": args.batch}
    raw["attack"]["attacks"]["pgd_linf"]["options"] = {"steps": args.steps}
    raw["parallel"] = {"shard_images": args.shard_images, "torch_threads": 1}
    params = params_from_dict(raw)
    (tmp / "params.yaml").write_text(yaml.safe_dump(raw))
    data = tmp / "data"
    synthesize(params_path=str(tmp / "params.yaml"), data_dir=str(data))
    torch.manual_seed(0)
    model = build_restorer("unet", size=args.size, cond_dim=params.psf.code_dim)
    save_model(model, data / "models" / "unet", restorer_spec(model))
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    load0 = os.getloadavg()
    rows, ref = [], None
    for workers in (1, 2):
        start, run = dask_run(params, data, tmp / f"out{workers}", workers, api_url)
        rows.append((f"dask, {workers} worker{'s' * (workers > 1)} x 1 thread", start, run))
        ref = ref or outputs(tmp / "out1")
    rows.append(("sequential, 1 process x 1 thread", 0.0, run_stage(params, data, tmp / "outseq1")))
    if not args.skip_threaded:
        seq = params.model_copy(update={"parallel": params.parallel.model_copy(update={"torch_threads": cpu_count()})})
        rows.append((f"sequential, 1 process x {cpu_count()} threads", 0.0, run_stage(seq, data, tmp / "outseq")))
    load1 = os.getloadavg()
    n = len(ref[1])
    print(f"attack stage: unet-{args.size}, {n} images {PARAMS['dataset']['crop_px']} px, PGD-{args.steps}, batch "
          f"{args.batch}, {len(shard_ranges(n, args.shard_images, args.batch))} shards; {cpu_count()} CPUs")
    print(f"{'run':36s} {'start s':>8s} {'stage s':>8s} {'total s':>8s}")
    for name, start, run in rows:
        print(f"{name:36s} {start:8.2f} {run:8.2f} {start + run:8.2f}")
    (_, s1, r1), (_, s2, r2) = rows[:2]
    print(f"ratio t1/t2 without startup: {r1 / r2:.2f}   with startup: {(s1 + r1) / (s2 + r2):.2f}")
    threaded = "" if args.skip_threaded else \
        f", sequential {cpu_count()} threads {same(ref, outputs(tmp / 'outseq'))}"
    print(f"outputs bit-identical to 1 worker: 2 workers {same(ref, outputs(tmp / 'out2'))}, sequential 1 thread "
          f"{same(ref, outputs(tmp / 'outseq1'))}{threaded}")
    print(f"load average (1, 5, 15 min) before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}   "
          f"after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
