"""tools/read_distckpt.py (h5py and numpy, written from docs/format.md) against the C++ loader.

For each checkpoint given, `distckpt export` (the C++ loader's verified reads) writes a .pt
that torch loads; the independent reader must give the same paths, dtypes, shapes and bits for
every tensor and the same value for every scalar, with every checksum checked (xxhash). A
flipped bit must make the independent reader fail as well.
usage: reader_test.py CLI WORKDIR CKPT...
"""
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import read_distckpt  # noqa: E402
from checks import check, finish  # noqa: E402

cli, work, ckpts = sys.argv[1], sys.argv[2], sys.argv[3:]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)


def flatten(value, prefix, out):
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(v, f"{prefix}/{k}" if prefix else str(k), out)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, v in enumerate(value):
            flatten(v, f"{prefix}/{i}", out)
    else:
        out[prefix] = value
    return out


def same_tensor(t, a):
    if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        ref = t.view(torch.uint8).numpy()
    elif t.dtype == torch.bfloat16:
        ref = t.float().numpy()
    else:
        ref = t.numpy()
    return (ref.dtype == a.dtype and ref.shape == a.shape and
            np.ascontiguousarray(ref).tobytes() == np.ascontiguousarray(a).tobytes())


def same_scalar(x, y):
    if isinstance(x, tuple):
        x = list(x)
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (math.isnan(x) and math.isnan(y))
    return x == y


for ckpt in ckpts:
    name = os.path.basename(os.path.dirname(ckpt))
    pt = os.path.join(work, name + ".pt")
    r = subprocess.run([cli, "export", ckpt, pt], capture_output=True, text=True)
    if r.returncode != 0:
        check(f"{name}: export", False, r.stderr)
        continue
    exported = flatten(torch.load(pt, weights_only=False), "", {})
    ours = read_distckpt.read_checkpoint(ckpt, verify=True)
    tensors = [p for p, v in ours.items() if isinstance(v, np.ndarray)]
    # Export adds Python's optimizer defaults (param_groups/*/maximize, ...), never tensors.
    extra = [p for p in exported if p not in ours and "/param_groups/" not in p]
    check(f"{name}: the same paths ({len(tensors)} tensors, {len(ours) - len(tensors)} scalars)",
          not extra and all(p in exported for p in ours), f"extra {extra}, missing "
          f"{[p for p in ours if p not in exported]}")
    bad = [p for p in tensors if p in exported and not same_tensor(exported[p], ours[p])]
    check(f"{name}: every tensor bit-identical, dtypes and shapes equal", not bad, str(bad))
    bad = [p for p, v in ours.items() if p not in tensors and p in exported and
           not same_scalar(exported[p], v)]
    check(f"{name}: every scalar equal", not bad,
          str([(p, exported[p], ours[p]) for p in bad]))

    # The command line on one tensor of each kind (packed and not), as the demo's last line.
    index = read_distckpt.read_index(ckpt)
    for packed in (True, False):
        record = next((t for t in index["tensors"] if t["shards"] and
                       ("pack_start" in t["shards"][0]) == packed), None)
        if record is None:
            continue
        r = subprocess.run([sys.executable, read_distckpt.__file__, ckpt, record["path"]],
                           capture_output=True, text=True)
        want = f"{record['path']}  {ours[record['path']].dtype} {list(record['shape'])}"
        check(f"{name}: read_distckpt.py CKPT {record['path']} ({'packed' if packed else 'own dataset'})",
              r.returncode == 0 and r.stdout.splitlines()[0] == want, r.stdout + r.stderr)

    damaged = os.path.join(work, name + "-damaged")
    shutil.copytree(ckpt, damaged)
    index = read_distckpt.read_index(damaged)
    record = next(t for t in index["tensors"] if t["shards"])
    shard = record["shards"][-1]
    with open(os.path.join(damaged, shard["file"]), "r+b") as f:
        f.seek(shard["byte_offset"])
        byte = f.read(1)
        f.seek(shard["byte_offset"])
        f.write(bytes([byte[0] ^ 1]))
    try:
        read_distckpt.read_checkpoint(damaged, verify=True)
        caught = ""
    except read_distckpt.FormatError as e:
        caught = str(e)
    check(f"{name}: a flipped bit in {record['path']} fails the independent reader's checksum",
          shard["file"] in caught, caught)
finish()
