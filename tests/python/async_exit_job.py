"""A job that starts a background save and ends without waiting for it: the save must still be
committed whole, and the processes exit cleanly. usage: async_exit_job.py ROOT (under mpirun or
torchrun)"""
import sys

import torch

import distckpt

ckpt = distckpt.Checkpointer(sys.argv[1], timeout=60)
torch.manual_seed(7)
state = {"model_state_dict": {"w": torch.randn(2048, 1024)}, "epoch": 1}
ckpt.save_async(state, step=1)
print(f"rank {ckpt.rank}: exiting with the save in flight", flush=True)
