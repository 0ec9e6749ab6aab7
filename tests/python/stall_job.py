"""A torchrun job in which rank 1 stalls (sleeps) before a checkpoint: every other rank must
raise distckpt.Error within the checkpointer's timeout, naming the collective, and nothing is
committed. usage: torchrun --nproc_per_node=N stall_job.py ROOT TIMEOUT"""
import sys
import time

import torch

import distckpt

root, timeout = sys.argv[1], float(sys.argv[2])
ckpt = distckpt.Checkpointer(root, timeout=timeout)
if ckpt.rank == 1:
    time.sleep(600)  # stalled: never arrives at the save
start = time.monotonic()
try:
    ckpt.save({"w": torch.ones(4)}, step=1)
    print(f"rank {ckpt.rank}: saved without rank 1", flush=True)
except distckpt.Error as e:
    print(f"rank {ckpt.rank}: raised after {time.monotonic() - start:.1f} s: [{e.code}] {e}",
          flush=True)
    sys.exit(3)
