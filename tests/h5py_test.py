"""h5py reads distckpt checkpoints without help from distckpt, with the reader in docs/format.md.

Usage: h5py_test.py CKPT_DIR [packed|unpacked|v1]
"""
import os
import re
import sys

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ckpt, layout = sys.argv[1], sys.argv[2]

# The reader exactly as the format document prints it.
doc = open(os.path.join(HERE, "..", "docs", "format.md")).read()
snippet = re.search(r"<!-- h5py-reader: begin -->\n```python\n(.*?)```", doc, re.S).group(1)
namespace = {}
exec(snippet, namespace)
read_tensor = namespace["read_tensor"]

expected = np.array([-2.5, -1.0, 0.0, 0.5, 1.0, 3.0]).reshape(2, 3)
kinds = {"float32": "f", "float64": "f", "float16": "f", "bfloat16": "f", "int8": "i",
         "int16": "i", "int32": "i", "int64": "i", "uint8": "u", "bool": "b"}
for name, kind in kinds.items():
    data = read_tensor(ckpt, "model_state_dict/" + name)
    assert data.dtype.kind == kind, (name, data.dtype)
    if name == "bool":
        assert (data == (expected > 0)).all(), data
        continue
    want = np.trunc(np.abs(expected)) if kind in "iu" else expected
    assert np.array_equal(data.astype(np.float64), want), (name, data)
    if name == "float16":
        assert data.dtype == np.float16

# Where the bytes are: one dataset per tensor, or one pack per dtype.
datasets = {}
with h5py.File(os.path.join(ckpt, "rank-00000.h5"), "r") as f:
    f.visititems(lambda n, o: datasets.update({n: o.attrs["torch_dtype"]})
                 if isinstance(o, h5py.Dataset) else None)
datasets = {n: (a.decode() if isinstance(a, bytes) else a) for n, a in datasets.items()}
if layout == "packed":
    assert datasets == {"_distckpt/pack/" + k: k for k in kinds}, datasets
else:
    assert datasets == {"model_state_dict/" + k: k for k in kinds}, datasets

with h5py.File(os.path.join(ckpt, "manifest.h5"), "r") as m:
    assert m.attrs["distckpt_format"] in (b"distckpt", "distckpt")
    assert m.attrs["step"] == 1 and m.attrs["epoch"] == 7 and m.attrs["loss"] == 0.125
    assert m.attrs["format_version"] == (1 if layout == "v1" else 2)
    assert "_distckpt/index" in m
    assert ("_distckpt/packed" in m) == (layout == "packed")
    if layout == "packed":
        # The table form of the same lookup, as the format document shows it.
        rows = m["_distckpt/packed"][()]
        row = rows[rows["path"] == b"model_state_dict/int32"][0]
        with h5py.File(os.path.join(ckpt, row["file"].decode()), "r") as f:
            pack = f[row["dataset"].decode()]
            values = pack[row["pack_start"]:row["pack_start"] + row["count"]]
        assert row["shape"] == b"[2, 3]", row["shape"]
        assert np.array_equal(values.reshape(2, 3), np.trunc(np.abs(expected)))
print("h5py read", len(kinds), "dtypes exactly,", layout)
