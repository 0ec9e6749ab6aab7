"""h5py reads distckpt rank files and the manifest without help from distckpt."""
import glob
import sys

import h5py
import numpy as np

root = sys.argv[1]
ckpt = root + "/step-00000001"
expected = np.array([[-2.5, -1.0, 0.0, 0.5, 1.0, 3.0]]).reshape(2, 3)
kinds = {"float32": "f", "float64": "f", "float16": "f", "bfloat16": "f", "int8": "i",
         "int16": "i", "int32": "i", "int64": "i", "uint8": "u"}
seen = set()
for path in glob.glob(ckpt + "/rank-*.h5"):
    with h5py.File(path, "r") as f:
        group = f["model_state_dict"]
        for name in group:
            ds = group[name]
            data = ds[...]
            attr = ds.attrs["torch_dtype"]
            assert (attr.decode() if isinstance(attr, bytes) else attr) == name, (name, attr)
            if name == "bool":
                assert data.dtype == np.bool_, data.dtype
                assert (data == (expected > 0)).all(), data
            else:
                assert data.dtype.kind == kinds[name], (name, data.dtype)
                want = np.trunc(np.abs(expected)) if kinds[name] in "iu" else expected
                assert np.array_equal(data.astype(np.float64), want), (name, data)
            if name == "float16":
                assert data.dtype == np.float16
            seen.add(name)
assert seen == set(kinds) | {"bool"}, seen
with h5py.File(ckpt + "/manifest.h5", "r") as m:
    assert m.attrs["distckpt_format"] in (b"distckpt", "distckpt")
    assert m.attrs["step"] == 1 and m.attrs["epoch"] == 7 and m.attrs["loss"] == 0.125
    assert "_distckpt/index" in m
print("h5py read", len(seen), "dtypes exactly")
