"""torchrun entry for tests: rank 1 fails at once, rank 0 waits in a collective (until torchrun stops it)."""

from __future__ import annotations

import os
import sys
import traceback

import torch.distributed as dist

from ops.launch import report_failure

if __name__ == "__main__":
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    try:
        if rank == 1:
            raise ValueError("broken on rank 1")
        dist.barrier()
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        print(f"error: rank {rank}: {report_failure(rank, err)}", file=sys.stderr, flush=True)
        sys.exit(1)
