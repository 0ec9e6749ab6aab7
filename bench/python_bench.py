"""distckpt's Python package against torch.distributed.checkpoint, in the same mpirun job, on
the same tensors: save and load (in place, as DCP loads) of a replicated state, interleaved
round by round (the order alternates), medians of the rounds. Every loaded tensor is compared
with what was saved. Page cache is dropped before every load. Prints one JSON line per
measurement from rank 0.

States: "transformer" (bench/transformer_shapes.py: GPT-2-small with AdamW, 592 float32
tensors, 1.49 GB) and "64mib" (16 float32 tensors of 64 MiB, 1 GiB).
usage: mpirun -np N python bench/python_bench.py STATE DIR [reps]
"""
import json
import os
import shutil
import statistics
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcp_common import evict, init_gloo, timed  # noqa: E402
from transformer_shapes import tensors as transformer_tensors  # noqa: E402

import distckpt  # noqa: E402

kind, work = sys.argv[1], sys.argv[2]
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
rank, world = init_gloo(29687)
g = torch.Generator().manual_seed(0)
if kind == "transformer":
    shapes = transformer_tensors()
else:
    shapes = [[f"model_state_dict/t{i}", [4096, 4096]] for i in range(16)]
state = {}
for name, shape in shapes:
    node = state
    parts = name.split("/")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = torch.randn(shape, generator=g)
flat = {n: t for n, t in distckpt._tensor_entries(state)}
nbytes = sum(t.numel() * t.element_size() for t in flat.values())


def zeros_like_state(node):
    return {k: zeros_like_state(v) if isinstance(v, dict) else torch.zeros_like(v)
            for k, v in node.items()}


def same(loaded):
    got = dict(distckpt._tensor_entries(loaded))
    ok = torch.tensor([int(all(torch.equal(got[n], t) for n, t in flat.items()))])
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def fresh(path):
    dist.barrier()
    if rank == 0:
        shutil.rmtree(path, ignore_errors=True)
    dist.barrier()
    return path


ours_root = os.path.join(work, f"distckpt-{world}")
dcp_root = os.path.join(work, f"dcp-{world}")
ckpt = distckpt.Checkpointer(fresh(ours_root))
times = {}


def record(tool, op, seconds):
    times.setdefault((tool, op), []).append(seconds)


def distckpt_round(step):
    record("distckpt", "save", timed(lambda: ckpt.save(state, step)))
    d = os.path.join(ours_root, f"step-{step:08d}")
    if rank == 0:
        evict(d)
    dest = zeros_like_state(state)
    record("distckpt", "load", timed(lambda: ckpt.load(dest, d)))
    assert same(dest), "distckpt loaded different tensors"


def dcp_round(step):
    d = fresh(os.path.join(dcp_root, str(step)))
    writer = dcp.FileSystemWriter(d, sync_files=True)
    record("dcp", "save", timed(lambda: dcp.save(state, storage_writer=writer)))
    if rank == 0:
        evict(d)
    dest = zeros_like_state(state)
    record("dcp", "load", timed(lambda: dcp.load(dest, storage_reader=dcp.FileSystemReader(d))))
    assert same(dest), "DCP loaded different tensors"


for step in range(1, reps + 1):
    rounds = [distckpt_round, dcp_round] if step % 2 else [dcp_round, distckpt_round]
    for r in rounds:
        r(step)
if rank == 0:
    for (tool, op), values in times.items():
        s = statistics.median(values)
        print(json.dumps({"state": kind, "tool": tool, "op": op, "ranks": world, "bytes": nbytes,
                          "seconds": s, "gbps": nbytes / s / 1e9, "rounds": len(values)}),
              flush=True)
dist.barrier()
dist.destroy_process_group()
