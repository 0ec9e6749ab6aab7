"""PyTorch DCP's side of staging_bench: dcp.save and dcp.load of the same state (float32 tensors
of 256 MiB on one device, one process, no process group), measured the same way: GB/s = tensor
bytes / seconds (page cache evicted before the load), peak host memory above the resident size
just before each call (VmHWM after clear_refs). Prints one line, appends one CSV row.

usage: staging_dcp.py --gib G [--device cuda|cpu] [--dir D] [--csv F]
"""
import argparse
import os
import shutil
import sys
import time

import torch
import torch.distributed.checkpoint as dcp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dcp_common import evict  # noqa: E402

TENSOR_ELEMS = 64 << 20


def status_mib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return -1.0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def measure(device, fn):
    """(seconds, peak MiB above the resident size before) of fn()."""
    base = status_mib("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0, status_mib("VmHWM") - base


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--dir", default="/tmp/distckpt-staging-dcp")
    ap.add_argument("--csv")
    args = ap.parse_args()
    count = max(1, int(args.gib * 4 + 0.5))
    state = {f"model_state_dict/layer{i}": torch.rand(TENSOR_ELEMS, device=args.device)
             for i in range(count)}
    back = {k: torch.zeros_like(v) for k, v in state.items()}
    sync(args.device)
    shutil.rmtree(args.dir, ignore_errors=True)
    save_s, save_peak = measure(args.device, lambda: dcp.save(state, checkpoint_id=args.dir))
    evict(args.dir)
    load_s, load_peak = measure(args.device, lambda: dcp.load(back, checkpoint_id=args.dir))
    for k, v in state.items():
        if not torch.equal(v, back[k]):
            sys.exit(f"MISMATCH after dcp.load: {k}")
    shutil.rmtree(args.dir, ignore_errors=True)
    gb = count * TENSOR_ELEMS * 4 / 1e9
    print(f"dcp {args.device} {count * TENSOR_ELEMS * 4 / 2**30:.2f} GiB: save {gb / save_s:.2f} GB/s, "
          f"load {gb / load_s:.2f} GB/s; peak host memory above baseline: save {save_peak:.0f} MiB, "
          f"load {load_peak:.0f} MiB", flush=True)
    if args.csv:
        fresh = not os.path.exists(args.csv)
        with open(args.csv, "a") as f:
            if fresh:
                f.write("tool,device,gib,save_gbps,load_gbps,save_peak_mib,load_peak_mib\n")
            f.write(f"dcp,{args.device},{count / 4},{gb / save_s},{gb / load_s},"
                    f"{save_peak},{load_peak}\n")


if __name__ == "__main__":
    main()
