"""``reprlab bench gather``: peak memory per rank of gathering an evaluation split's features.

Two processes in a gloo group each hold half of an N x D float32 feature matrix (default: SOP's
test split, 60,502 images, D&C's 2,048-d penultimate features) and gather it through the context's
own code path (``Context._gather_rows``): to every rank (``all_gather_object``, what evaluation did
before) and to rank 0 only (``gather_object``, what it does now: only rank 0 computes metrics and
clusters). Each mode runs in fresh processes, so each peak (``ru_maxrss``) is that mode's alone.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from types import SimpleNamespace

import numpy as np


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _worker(rank: int, world: int, init: str, rows: int, dim: int, everywhere: bool, out: str) -> None:
    import torch
    import torch.distributed as dist

    from reprlab.platform.contract.context import Context

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    share = np.array_split(np.arange(rows), world)[rank]
    local = torch.from_numpy(np.random.default_rng(rank).standard_normal((len(share), dim), dtype=np.float32))
    dist.barrier()
    before, t0 = _peak_mb(), time.perf_counter()
    ctx = SimpleNamespace(is_main=rank == 0, world_size=world)
    got = Context._gather_rows(ctx, local, everywhere)
    seconds = time.perf_counter() - t0
    held = 0 if got is None else got.nbytes / 2**20
    dist.barrier()
    record = {"rank": rank, "peak_mb": _peak_mb(), "peak_before_mb": before, "gathered_mb": held, "seconds": seconds}
    with open(f"{out}.{rank}", "w") as f:
        json.dump(record, f)
    dist.destroy_process_group()


def bench_gather(rows: int = 60_502, dim: int = 2048, world: int = 2) -> list[dict]:
    import torch.multiprocessing as mp

    results = []
    for mode, everywhere in (("every rank (before)", True), ("rank 0 only (now)", False)):
        with tempfile.TemporaryDirectory() as tmp:
            mp.start_processes(_worker, args=(world, f"file://{tmp}/store", rows, dim, everywhere, f"{tmp}/out"),
                               nprocs=world, start_method="spawn")
            for r in range(world):
                with open(f"{tmp}/out.{r}") as f:
                    results.append({"mode": mode, **json.load(f)})
    return results


def format_gather_bench(results: list[dict], rows: int, dim: int) -> str:
    lines = [f"gathering {rows} x {dim} float32 ({rows * dim * 4 / 2**20:.0f} MB) from 2 ranks, peak RSS per rank:",
             f"{'mode':<22} {'rank':>4} {'peak MB':>9} {'before MB':>10} {'held MB':>8} {'s':>6}"]
    for r in results:
        lines.append(f"{r['mode']:<22} {r['rank']:>4} {r['peak_mb']:>9.0f} {r['peak_before_mb']:>10.0f} "
                     f"{r['gathered_mb']:>8.0f} {r['seconds']:>6.2f}")
    return "\n".join(lines)
