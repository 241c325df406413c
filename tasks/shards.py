"""Run a stage's shards with the runner of params.parallel: a loop, threads or Dask workers.

A shard is one unit of a stage's work over a contiguous range of whole batches; it writes
its result to ``<staging dir>/.shards/<key>.pt`` (atomically) and returns nothing large. A
shard whose file exists is skipped, so a killed stage resumes shard by shard. The shard
function is named as ``"module:function"`` and called as ``fn(context, job)`` with plain
picklable dicts, so that a worker process imports it and loads models itself.
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.common import progress
from udcguard.config import ParallelParams, Params, params_from_dict
from udcguard.errors import UdcGuardError
from udcguard.io.atomic import write_bytes

SHARDS_DIR = ".shards"


@functools.lru_cache(maxsize=2)
def shard_params(text: str) -> Params:
    """Params from their JSON (a shard's context carries them as text), parsed once per process."""
    return params_from_dict(json.loads(text))


def shard_ranges(n: int, shard_images: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges over n images: ``shard_images`` rounded up to whole batches."""
    size = -(-shard_images // batch_size) * batch_size
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def batches(start: int, stop: int, batch_size: int) -> list[tuple[int, int]]:
    """The batches of a shard, on the stage's global grid (multiples of batch_size)."""
    return [(i, min(i + batch_size, stop)) for i in range(start, stop, batch_size)]


def shard_file(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / SHARDS_DIR / f"{key}.pt"


def save_shard(path: str | Path, obj: dict[str, Any]) -> None:
    """torch.save to bytes, then an atomic write (a kill never leaves half a shard)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def load_shard(path: str | Path) -> dict[str, Any]:
    """A shard written by :func:`save_shard` (tensors and plain data only)."""
    try:
        return torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise UdcGuardError(f"{path}: shard missing (the stage's shards did not all run)") from None
    except Exception as err:  # noqa: BLE001 - corrupt file: one line naming it
        raise UdcGuardError(f"{path}: unreadable shard ({type(err).__name__})") from None


def shard_jobs(out_dir: str | Path, prefix: str, n: int, shard_images: int, batch_size: int, **job) -> list[dict]:
    """The jobs of one output over n images: key ``<prefix>.<start>-<stop>``, shard file, range, ``job``."""
    keys = [(f"{prefix}.{i:06d}-{j:06d}", i, j) for i, j in shard_ranges(n, shard_images, batch_size)]
    return [{**job, "key": k, "out": str(shard_file(out_dir, k)), "start": i, "stop": j} for k, i, j in keys]


def gather(jobs: list[dict], field: str, ids: list[str], what: str) -> tuple[list[dict], torch.Tensor]:
    """Load one output's shards in order: (the shards, their ``field`` tensors concatenated); their ids
    must be exactly ``ids``."""
    parts = [load_shard(job["out"]) for job in jobs]
    if [i for part in parts for i in part["ids"]] != list(ids):
        where = Path(jobs[0]["out"]).parent if jobs else SHARDS_DIR
        raise UdcGuardError(f"{where}: shards of {what} do not match its ids")
    return parts, torch.cat([part[field] for part in parts])


def remove_shards(out_dir: str | Path) -> None:
    shutil.rmtree(Path(out_dir) / SHARDS_DIR, ignore_errors=True)


def stamp(path: str | Path) -> int:
    """Latest mtime (ns) of a file or of the files under a folder: a per-process cache key."""
    path = Path(path)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return max((f.stat().st_mtime_ns for f in files), default=0)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def torch_threads(parallel: ParallelParams) -> int | None:
    """Threads per worker: ``torch_threads``, else cpu count // workers (sequential: all);
    None for a remote Dask cluster (its workers keep their own setting)."""
    if parallel.torch_threads is not None:
        return parallel.torch_threads
    if parallel.address is not None:
        return None
    workers = 1 if parallel.runner == "sequential" else parallel.workers
    return max(1, cpu_count() // workers)


def call_shard(fn: str, context: dict, job: dict, threads: int | None) -> Any:
    """Import ``module:function`` and run it on one shard with ``threads`` torch threads."""
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    module, name = fn.split(":")
    return getattr(importlib.import_module(module), name)(context, job)


@task(name="shard", cache_policy=NO_CACHE)
def shard_task(fn: str, context: dict, job: dict, threads: int | None) -> Any:
    """One shard as a Prefect task run (on a thread or a Dask worker)."""
    return call_shard(fn, context, job, threads)


@flow(name="shards")
def shard_flow(fn: str, context: dict, jobs: list[dict], threads: int | None, desc: str) -> list[Any]:
    """Submit every shard to the flow's task runner; results in submission order."""
    futures = [shard_task.with_options(task_run_name=f"{desc}: {job['key']}").submit(fn, context, job, threads)
               for job in jobs]
    bar = progress(len(futures), desc)
    for _ in as_completed(futures):
        bar.update(1)
    bar.close()
    return [f.result() for f in futures]


def dask_runner(parallel: ParallelParams):
    """A DaskTaskRunner: the scheduler at ``address``, or a local cluster of worker processes.

    Workers of an external cluster need this repository importable (started in its root)
    and ``PREFECT_API_URL`` set to a server; a local cluster's workers get this process's.
    """
    from prefect.client.orchestration import get_client
    from prefect_dask import DaskTaskRunner

    if parallel.address is not None:
        return DaskTaskRunner(address=parallel.address)
    with get_client(sync_client=True) as client:  # workers report to this process's API (ephemeral too)
        api_url = str(client.api_url)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": parallel.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
        "env": {"PREFECT_API_URL": api_url, "DASK_LOGGING__DISTRIBUTED": "warning"}})


def run_shards(fn: str, context: dict, jobs: list[dict], parallel: ParallelParams, desc: str) -> int:
    """Run the jobs whose shard file (``job["out"]``) is missing; returns how many ran."""
    todo = [job for job in jobs if not Path(job["out"]).exists()]
    if not todo:
        return 0
    threads = torch_threads(parallel)
    if parallel.runner == "dask":
        runner = dask_runner(parallel)  # imports distributed, which sets its log level: quieten it after
        log = logging.getLogger("distributed")  # the scheduler and nannies log here, in this process
        level = log.level
        log.setLevel(max(level, logging.WARNING))
        try:
            shard_flow.with_options(task_runner=runner)(fn, context, todo, threads, desc)
        finally:
            log.setLevel(level)
        return len(todo)
    before = torch.get_num_threads()  # threads and sequential share this process's torch pool
    try:
        if parallel.runner == "threads":
            runner = ThreadPoolTaskRunner(max_workers=parallel.workers)
            shard_flow.with_options(task_runner=runner)(fn, context, todo, threads, desc)
        else:
            bar = progress(len(todo), desc)
            for job in todo:
                call_shard(fn, context, job, threads)
                bar.update(1)
            bar.close()
    finally:
        torch.set_num_threads(before)
    return len(todo)
