"""One rank of the PyTorch side of bench/compare.sh: DCP save/load (gloo) and, on one process,
torch.save/torch.load, on the same state as save_load_bench (float32 tensors of 64 MiB named
model/t<i>, replicated on every rank). Prints one JSON line per measurement from rank 0.

Launched by mpirun; the rank and world size come from Open MPI's environment.
"""
import argparse
import json
import os
import resource
import shutil
import statistics

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from dcp_common import evict, init_gloo, timed



def state_tensor(i):
    return torch.rand(4096, 4096, generator=torch.Generator().manual_seed(i))


def state(gib, zeros=False):
    count = max(1, int(gib * 16))
    return {f"model/t{i}": torch.zeros(4096, 4096) if zeros else state_tensor(i)
            for i in range(count)}



def main():
    p = argparse.ArgumentParser()
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dir", default="/tmp/distckpt-dcp-bench")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--save-only", help="save once with DCP into this path and keep it")
    p.add_argument("--load-only", help="load a DCP checkpoint saved by another rank count")
    a = p.parse_args()
    rank, world = init_gloo(29561)
    nbytes = max(1, int(a.gib * 16)) * 4096 * 4096 * 4
    results = []

    def report(tool, op, secs):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak = torch.tensor([rss])
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        results.append({"tool": tool, "op": op, "ranks": world, "bytes": nbytes, "seconds": secs,
                        "gbps": nbytes / 1e9 / secs, "peak_rss_mib": peak.item()})

    def finish():
        if rank == 0:
            for r in results:
                print(json.dumps(r), flush=True)
        dist.destroy_process_group()

    if a.load_only:
        # Checked against the generator tensor by tensor, so that the process holds only what
        # DCP itself needs (the destination), as distckpt's benchmark does.
        loads = []
        for rep in range(a.reps):
            if rank == 0:
                evict(a.load_only)
            dest = state(a.gib, zeros=True)
            loads.append(timed(lambda: dcp.load(dest, checkpoint_id=a.load_only)))
            for k, t in dest.items():
                assert torch.equal(t, state_tensor(int(k.rsplit("t", 1)[1]))), k
            del dest
        report("DCP", "re-sharded load", statistics.median(loads))
        finish()
        return
    src = state(a.gib)
    assert nbytes == sum(t.numel() * t.element_size() for t in src.values())

    if a.save_only:
        if rank == 0:
            shutil.rmtree(a.save_only, ignore_errors=True)
        dist.barrier()
        writer = dcp.FileSystemWriter(a.save_only, sync_files=True)
        timed(lambda: dcp.save(src, storage_writer=writer))
        finish()
        return
    for threads, label in ((a.threads, f"DCP ({a.threads} thread)"), (None, "DCP (default threads)")):
        saves, loads = [], []
        for rep in range(a.reps):
            path = f"{a.dir}/dcp-{rep}"
            if rank == 0:
                shutil.rmtree(path, ignore_errors=True)
            dist.barrier()
            kw = {"sync_files": True}
            if threads:
                kw["thread_count"] = threads
            writer = dcp.FileSystemWriter(path, **kw)
            saves.append(timed(lambda: dcp.save(src, storage_writer=writer)))
            if rank == 0:
                evict(path)
            dest = state(a.gib, zeros=True)
            loads.append(timed(lambda: dcp.load(dest, checkpoint_id=path)))
            for k in src:  # correctness: no tool wins by skipping work
                assert torch.equal(dest[k], src[k]), k
            if rank == 0:
                shutil.rmtree(path, ignore_errors=True)
        report(label, "save", statistics.median(saves))
        report(label, "load (every rank whole)", statistics.median(loads))

    if world == 1:
        saves, loads = [], []
        for rep in range(a.reps):
            path = f"{a.dir}/torch-{rep}.pt"
            os.makedirs(a.dir, exist_ok=True)

            def save():
                with open(path, "wb") as f:
                    torch.save(src, f)
                    f.flush()
                    os.fsync(f.fileno())

            saves.append(timed(save))
            evict(a.dir)
            loaded = {}
            loads.append(timed(lambda: loaded.update(torch.load(path))))
            for k in src:
                assert torch.equal(loaded[k], src[k]), k
            os.remove(path)
        report("torch.save", "save", statistics.median(saves))
        report("torch.save", "load (every rank whole)", statistics.median(loads))
    finish()


if __name__ == "__main__":
    main()
