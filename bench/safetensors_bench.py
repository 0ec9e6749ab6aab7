"""Safetensors export of one training state: distckpt on 1 rank and on N ranks at once, against
PyTorch DCP's consolidation of its own per-rank safetensors (HuggingFaceStorageWriter, then
consolidate_safetensors_files), interleaved round by round, median of the rounds.

The state is bench/transformer_shapes.py's GPT-2-small with its AdamW state (592 float32
tensors, 1.49 GB). distckpt exports its checkpoint of the state (imported once from a
safetensors file); DCP consolidates the files its ranks wrote. Before every run the inputs are
dropped from the page cache. distckpt runs twice per rank count: reading through a memory
mapping (the default; the mapped file pages count in the resident size although they are page
cache) and with DISTCKPT_MMAP=0 (pread into the process's own 64 MiB rounds). Reported per run: wall time (distckpt: the whole `distckpt export`
process, startup included; DCP: the consolidate_safetensors_files call), throughput over the
tensor bytes, and peak resident memory per process (GNU time's maximum RSS; for DCP also minus
the same interpreter's RSS after its imports).
usage: python3 bench/safetensors_bench.py CLI MPIRUN WORKDIR [ranks, comma-separated] [reps]
Writes bench/results/safetensors.json and prints a Markdown table.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dcp_common import evict  # noqa: E402
from transformer_shapes import tensors as transformer_tensors  # noqa: E402

cli, mpirun, work = sys.argv[1:4]
ranks = [int(x) for x in (sys.argv[4] if len(sys.argv) > 4 else "2,4").split(",")]
reps = int(sys.argv[5]) if len(sys.argv) > 5 else 3
env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMP_NUM_THREADS="1")

DCP_SAVE = r'''
import os, sys, torch, torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.checkpoint import HuggingFaceStorageWriter, save
sys.path.insert(0, sys.argv[3]); from dcp_common import init_gloo
rank, world = init_gloo(29613)
state = load_file(sys.argv[1])
save(state, storage_writer=HuggingFaceStorageWriter(
    sys.argv[2], save_distributed=True, fqn_to_index_mapping={k: 1 for k in state}))
dist.destroy_process_group()
'''
DCP_CONSOLIDATE = r'''
import json, resource, sys, time
from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files
idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
names = json.load(open(sys.argv[3]))
t0 = time.perf_counter()
consolidate_safetensors_files(sys.argv[1], sys.argv[2], {k: 1 for k in names})
print(json.dumps({"seconds": time.perf_counter() - t0, "idle_rss_kib": idle}))
'''


def run(args, **kw):
    kw.setdefault("env", env)
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{args[:4]}... failed: {r.stdout[-2000:]} {r.stderr[-2000:]}")
    return r


def peak_rss(stderr):
    """GNU time -f 'RSS %M' lines (one per process) -> the largest, in MiB."""
    values = [int(v) for v in re.findall(r"RSS (\d+)", stderr)]
    if not values:
        raise RuntimeError("no peak RSS reported: " + stderr[-2000:])
    return max(values) / 1024


def prepare():
    os.makedirs(work, exist_ok=True)
    state_file = os.path.join(work, "state.safetensors")
    names = os.path.join(work, "names.json")
    if not os.path.exists(state_file):
        g = torch.Generator().manual_seed(0)
        state = {n: torch.randn(shape, generator=g) for n, shape in transformer_tensors()}
        save_file(state, state_file)
        json.dump(sorted(state), open(names, "w"))
        del state
    root = os.path.join(work, "ckpt")
    if not os.path.isdir(root):
        run([cli, "import", state_file, root, "--step", "1"])
    return state_file, names, os.path.join(root, "step-00000001")


def distckpt_export(ckpt, np, mmap=True):
    out = os.path.join(work, f"out-distckpt-{np}")
    shutil.rmtree(out, ignore_errors=True)
    evict(ckpt)
    timer = ["/usr/bin/time", "-f", "RSS %M"]
    args = [cli, "export", ckpt, out, "--format", "safetensors"]
    launch = [mpirun, "-np", np, "--oversubscribe"] + timer if np > 1 else timer
    if not mmap:  # reads with pread: resident memory is the process's own buffers only
        launch = launch[:1] + ["-x", "DISTCKPT_MMAP=0"] + launch[1:] if np > 1 else launch
    t0 = time.perf_counter()
    r = run(launch + args, env=dict(env, DISTCKPT_MMAP="1" if mmap else "0"))
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "rss_mib": peak_rss(r.stderr)}


def dcp_consolidate(state_file, names, np):
    sharded = os.path.join(work, f"dcp-{np}")
    if not os.path.isdir(sharded):
        script = os.path.join(work, "dcp_save.py")
        open(script, "w").write(DCP_SAVE)
        run([mpirun, "-np", np, "--oversubscribe", sys.executable, script, state_file, sharded, HERE])
    script = os.path.join(work, "dcp_consolidate.py")
    open(script, "w").write(DCP_CONSOLIDATE)
    out = os.path.join(work, "out-dcp")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    evict(sharded)
    r = run(["/usr/bin/time", "-f", "RSS %M", sys.executable, script, sharded, out, names])
    inner = json.loads(r.stdout.strip().splitlines()[-1])
    shutil.rmtree(out, ignore_errors=True)
    rss = peak_rss(r.stderr)
    return {"seconds": inner["seconds"], "rss_mib": rss,
            "rss_above_idle_mib": rss - inner["idle_rss_kib"] / 1024}


def main():
    state_file, names, ckpt = prepare()
    total = sum(os.path.getsize(os.path.join(ckpt, f)) for f in os.listdir(ckpt)
                if f.startswith("rank-"))
    runs = {}
    for rep in range(reps):
        for np in [1] + ranks:
            runs.setdefault(f"distckpt, {np} rank(s)", []).append(distckpt_export(ckpt, np))
            runs.setdefault(f"distckpt, {np} rank(s), DISTCKPT_MMAP=0", []).append(
                distckpt_export(ckpt, np, mmap=False))
        for np in ranks:
            runs.setdefault(f"DCP consolidation of {np} ranks' files", []).append(
                dcp_consolidate(state_file, names, np))
        print(f"round {rep + 1} of {reps} done", file=sys.stderr)
    rows = []
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        row = {"tool": name, "seconds": seconds, "gb_per_s": total / seconds / 1e9,
               "rss_mib": statistics.median(r["rss_mib"] for r in results)}
        if "rss_above_idle_mib" in results[0]:
            row["rss_above_idle_mib"] = statistics.median(r["rss_above_idle_mib"] for r in results)
        rows.append(row)
    base = rows[0]["seconds"]
    result = {"date": time.strftime("%Y-%m-%d"), "tensor_bytes": total, "reps": reps, "rows": rows}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    json.dump(result, open(os.path.join(HERE, "results", "safetensors.json"), "w"), indent=2)
    print(f"| export of {total / 1e9:.2f} GB to safetensors | time (s) | GB/s | vs distckpt 1 rank "
          "| peak RSS per process (MiB) |")
    print("|---|---|---|---|---|")
    for row in rows:
        extra = f" ({row['rss_above_idle_mib']:.0f} above idle)" if "rss_above_idle_mib" in row else ""
        print(f"| {row['tool']} | {row['seconds']:.2f} | {row['gb_per_s']:.2f} | "
              f"{base / row['seconds']:.2f}x | {row['rss_mib']:.0f}{extra} |")


main()
