"""A Python data-parallel job: gloo, DistributedDataParallel, Adam, checkpoints through distckpt.

Each step takes a fixed global batch of 24 samples, split evenly among the ranks; the loss
printed is the global mean. Saves the four-key dict every --save-every steps; with --resume,
starts from the newest good checkpoint (loaded as torch.load would give it).
usage: mpirun -np N python ddp_job.py ROOT STEPS SAVE_EVERY [--resume]
   or: torchrun --nproc_per_node=N ddp_job.py ROOT STEPS SAVE_EVERY [--resume]
"""
import os
import sys

import torch
import torch.distributed as dist

import distckpt

root, steps, save_every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
resume = "--resume" in sys.argv
rank = int(os.environ.get("RANK", os.environ.get("OMPI_COMM_WORLD_RANK", 0)))
world = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE", 1)))
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("MASTER_PORT", os.environ.get("DDP_PORT", "29671"))
torch.set_num_threads(1)
dist.init_process_group("gloo", rank=rank, world_size=world)

ckpt = distckpt.Checkpointer(root, keep_last=2, timeout=60)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
first = 1
if resume and ckpt.latest():
    state = distckpt.load(ckpt.latest())
    model.load_state_dict(state["model_state_dict"])
    optimizer.load_state_dict(state["optimizer_state_dict"])
    first = state["epoch"] + 1
# DDP rebuilds its gradient buckets after the first step unless find_unused_parameters is set;
# a resumed run would then reduce its first step in other buckets than the run never stopped,
# and gloo's ring all-reduce sums an element in an order that follows its offset in the bucket.
ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

for step in range(first, steps + 1):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(24, 8, generator=g)
    y = torch.sin(x).sum(1, keepdim=True)
    part = slice(24 * rank // world, 24 * (rank + 1) // world)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(ddp(x[part]), y[part])
    loss.backward()  # DDP averages the gradients over the ranks
    optimizer.step()
    total = loss.detach() * (part.stop - part.start) / 24
    dist.all_reduce(total)
    if rank == 0:
        print(f"step {step} loss {total.item():.9g}", flush=True)
    if save_every and step % save_every == 0:
        ckpt.save({"epoch": step, "model_state_dict": model.state_dict(),
                   "optimizer_state_dict": optimizer.state_dict(), "loss": total.item()}, step)
dist.destroy_process_group()
