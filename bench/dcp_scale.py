"""One rank of the PyTorch DCP side of bench/scale.sh, on the states distckpt's benchmarks use:
--tensors N: N float32 tensors of 16 elements, replicated (scale_bench's state); --shapes FILE:
the realistic mix (mix_bench's state). Saves with dcp.save (FileSystemWriter, fsync, one
thread), saves again, loads on every rank, checks every tensor, and prints one JSON line from
rank 0. Launched by mpirun (gloo; rank and size from Open MPI's environment).
"""
import argparse
import json
import os
import shutil

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from dcp_common import evict, init_gloo, timed




def build(a):
    if a.tensors:
        storage = torch.arange(a.tensors * 16, dtype=torch.float32)
        return {f"model_state_dict/layers.{i}.weight": storage[i * 16:(i + 1) * 16]
                for i in range(a.tensors)}
    shapes = json.load(open(a.shapes))
    g = torch.Generator()
    out = {}
    for i, (name, shape) in enumerate(shapes):
        g.manual_seed(i + 1)
        out[name] = torch.rand(shape, generator=g)
    return out


def disk_bytes(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tensors", type=int, default=0)
    p.add_argument("--shapes")
    p.add_argument("--dir", default="/tmp/distckpt-dcp-scale")
    a = p.parse_args()
    rank, world = init_gloo(29571)
    src = build(a)
    nbytes = sum(t.numel() * t.element_size() for t in src.values())
    paths = [f"{a.dir}/first", f"{a.dir}/again"]
    if rank == 0:
        shutil.rmtree(a.dir, ignore_errors=True)
    dist.barrier()
    saves = [timed(lambda: dcp.save(src, storage_writer=dcp.FileSystemWriter(
        path, sync_files=True, thread_count=1))) for path in paths]
    if rank == 0:
        evict(paths[0])
    dest = {k: torch.zeros_like(v) for k, v in src.items()}
    load = timed(lambda: dcp.load(dest, checkpoint_id=paths[0]))
    for k in src:  # no tool wins by skipping work
        assert torch.equal(dest[k], src[k]), k
    if rank == 0:
        print(json.dumps({"tool": "DCP", "ranks": world, "tensors": len(src), "bytes": nbytes,
                          "save": saves[0], "save_again": saves[1], "load": load,
                          "disk_ratio": disk_bytes(paths[0]) / nbytes}), flush=True)
        shutil.rmtree(a.dir, ignore_errors=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
