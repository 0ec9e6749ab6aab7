"""The manifest's virtual datasets give h5py each whole tensor, stitched from the rank files.

usage: vds_test.py CLI CHECKPOINT_ROOT WORKDIR  (compares with distckpt export, read by torch)
"""
import glob
import os
import subprocess
import sys

import h5py
import numpy as np
import torch

cli, root, work = sys.argv[1:4]
os.makedirs(work, exist_ok=True)
ckpt = sorted(glob.glob(os.path.join(root, "step-*")))[-1]
pt = os.path.join(work, "vds.pt")
subprocess.run([cli, "export", ckpt, pt], check=True, capture_output=True)
expected = torch.load(pt)


def leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from leaves(v, prefix + str(k) + "/")
        elif isinstance(v, torch.Tensor):
            yield prefix + str(k), v


os.chdir("/")  # relative source file names must resolve from anywhere
checked = 0
with h5py.File(os.path.join(ckpt, "manifest.h5"), "r") as f:
    for name, tensor in leaves(expected):
        if tensor.dim() == 0:
            continue
        data = f[name][...]
        want = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        assert data.shape == want.shape, (name, data.shape, want.shape)
        assert np.array_equal(data.astype(np.float64), want.astype(np.float64)), name
        checked += 1
listing = subprocess.run(["h5ls", "-r", os.path.join(ckpt, "manifest.h5")], check=True,
                         capture_output=True, text=True).stdout
assert "nested/flat3d" in listing, listing
print(f"h5py read {checked} virtual datasets, each equal to the exported tensor")
