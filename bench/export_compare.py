"""distckpt export against DCP's dcp_to_torch_save, on checkpoints of the same state saved by
bench/compare.sh: wall time and peak resident memory of each (a child process each), then a
check that each .pt holds exactly the saved tensors. Prints one JSON line per tool.

usage: export_compare.py DISTCKPT_CLI DISTCKPT_CKPT DCP_CKPT OUT_DIR
"""
import json
import os
import subprocess
import sys

import torch

cli, ours, theirs, out = sys.argv[1:5]
os.makedirs(out, exist_ok=True)
step = sorted(d for d in os.listdir(ours) if d.startswith("step-"))[-1]
jobs = [
    ("distckpt export", [cli, "export", os.path.join(ours, step), f"{out}/distckpt.pt"],
     f"{out}/distckpt.pt"),
    ("DCP dcp_to_torch_save",
     [sys.executable, "-c", "import sys\nfrom torch.distributed.checkpoint.format_utils import "
      "dcp_to_torch_save\ndcp_to_torch_save(sys.argv[1], sys.argv[2])", theirs, f"{out}/dcp.pt"],
     f"{out}/dcp.pt"),
]


def flatten(tree, prefix=""):
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            yield from flatten(v, name)
        else:
            yield name, v


for tool, cmd, path in jobs:
    # Each child starts with an empty page cache for the checkpoint it reads.
    src = ours if tool.startswith("distckpt") else theirs
    for root, _, files in os.walk(src):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    # A fresh wrapper per tool, so that its children's peak is this tool's alone.
    wrapper = ("import resource, subprocess, sys, time\n"
               "t0 = time.perf_counter()\n"
               "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
               "print(time.perf_counter() - t0, "
               "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    res = subprocess.run([sys.executable, "-c", wrapper] + cmd, check=True,
                         capture_output=True, text=True)
    secs, peak = (float(x) for x in res.stdout.split())
    loaded = dict(flatten(torch.load(path, mmap=True, weights_only=True)))
    names = sorted(k for k in loaded if k.startswith("model/t"))
    for k in names:  # correctness: no tool wins by skipping work
        i = int(k.rsplit("t", 1)[1])
        expect = torch.rand(4096, 4096, generator=torch.Generator().manual_seed(i))
        assert torch.equal(loaded[k], expect), f"{tool}: {k} differs"
    nbytes = sum(loaded[k].numel() * loaded[k].element_size() for k in names)
    assert names, f"{tool}: no tensors in {path}"
    del loaded
    os.remove(path)
    print(json.dumps({"tool": tool, "op": "export to one .pt", "ranks": 1, "bytes": nbytes,
                      "seconds": secs, "gbps": nbytes / 1e9 / secs, "peak_rss_mib": peak / 1024}), flush=True)
