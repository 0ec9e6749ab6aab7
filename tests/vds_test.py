"""The manifest's virtual datasets give h5py each whole tensor, stitched from the rank files.

usage: vds_test.py CLI CHECKPOINT_ROOT WORKDIR  (compares with distckpt export, read by torch)
"""
import glob
import os
import re
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


HERE = os.path.dirname(os.path.abspath(__file__))
doc = open(os.path.join(HERE, "..", "docs", "format.md")).read()
snippet = re.search(r"<!-- h5py-reader: begin -->\n```python\n(.*?)```", doc, re.S).group(1)
namespace = {}
exec(snippet, namespace)

os.chdir("/")  # relative source file names must resolve from anywhere
virtual = packed = 0
with h5py.File(os.path.join(ckpt, "manifest.h5"), "r") as f:
    in_packs = set()
    if "_distckpt/packed" in f:
        in_packs = {row.decode() for row in f["_distckpt/packed"]["path"]}
    for name, tensor in leaves(expected):
        want = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        data = namespace["read_tensor"](ckpt, name)
        assert data.shape == want.shape, (name, data.shape, want.shape)
        assert np.array_equal(data.astype(np.float64), want.astype(np.float64)), name
        if name in in_packs:
            assert name not in f, name + " is packed and has a virtual dataset as well"
            packed += 1
        elif tensor.dim() > 0 and tensor.numel() > 0:
            assert f[name].is_virtual, name
            virtual += 1
assert virtual > 0 and packed > 0, (virtual, packed)
listing = subprocess.run(["h5ls", "-r", os.path.join(ckpt, "manifest.h5")], check=True,
                         capture_output=True, text=True).stdout
assert "replicated" in listing and "nested/flat3d" not in listing, listing
print(f"h5py read {virtual} virtual datasets and {packed} packed tensors, each equal to the "
      "exported tensor")
