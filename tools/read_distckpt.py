#!/usr/bin/env python3
"""An independent reader of distckpt checkpoints, written from docs/format.md alone.

Needs h5py and numpy only (no distckpt code, no torch). Reads the index from manifest.h5 with
h5py and every shard's bytes straight from its rank file at the byte offset the index gives.
With the `xxhash` package installed it also checks every piece checksum (verify=True).

    from read_distckpt import read_checkpoint
    state = read_checkpoint("ckpts/step-00000042")   # {"model_state_dict/fc1.weight": array, ...}

    python3 tools/read_distckpt.py CKPT          # prints every tensor and scalar
    python3 tools/read_distckpt.py CKPT TENSOR   # one tensor, packed or not: dtype, shape, values
"""
import json
import os
import sys

import h5py
import numpy as np

SUPPORTED_VERSIONS = (1, 2)

# torch dtype name -> (numpy dtype of the stored little-endian bytes, bytes per element)
DTYPES = {
    "float32": ("<f4", 4), "float64": ("<f8", 8), "float16": ("<f2", 2),
    "bfloat16": ("<u2", 2),  # the upper half of a float32; widened below
    "int8": ("i1", 1), "int16": ("<i2", 2), "int32": ("<i4", 4), "int64": ("<i8", 8),
    "uint8": ("u1", 1), "bool": ("u1", 1),
    # numpy has no float8: the raw bytes (torch: .view(torch.float8_e4m3fn) gives the values)
    "float8_e4m3fn": ("u1", 1), "float8_e5m2": ("u1", 1),
}


class FormatError(Exception):
    pass


def read_index(ckpt_dir, hasher=None):
    """The manifest's index (a dict), after checking the format name and version."""
    with h5py.File(os.path.join(ckpt_dir, "manifest.h5"), "r") as m:
        if m.attrs.get("distckpt_format") != b"distckpt":
            raise FormatError(f"{ckpt_dir}: manifest.h5 is not a distckpt manifest")
        version = int(m.attrs["format_version"])
        if version not in SUPPORTED_VERSIONS:
            raise FormatError(f"{ckpt_dir}: format version {version}, this reader knows "
                              f"{SUPPORTED_VERSIONS}")
        raw = m["_distckpt/index"][()].tobytes()
        if hasher and hasher(raw) != int(m.attrs["index_xxh3"]):
            raise FormatError(f"{ckpt_dir}: the index fails index_xxh3")
    index = json.loads(raw)
    if index["format_version"] != version:
        raise FormatError(f"{ckpt_dir}: index and manifest disagree on the format version")
    return index


def verify_files(ckpt_dir, index, hasher):
    """manifest.xxh3, and each rank file's size and the checksum of its non-tensor bytes."""
    with open(os.path.join(ckpt_dir, "manifest.h5"), "rb") as f:
        whole = hasher(f.read())
    with open(os.path.join(ckpt_dir, "manifest.xxh3")) as f:
        if f.read().strip() != f"{whole:016x}":
            raise FormatError(f"{ckpt_dir}: manifest.h5 fails manifest.xxh3")
    ranges = {}
    for record in index["tensors"]:
        itemsize = DTYPES[record["dtype"]][1]
        for s in record["shards"]:
            ranges.setdefault(s["file"], []).append(
                (s["byte_offset"], s["byte_offset"] + s["flat_count"] * itemsize))
    for rec in index["file_records"]:
        with open(os.path.join(ckpt_dir, rec["name"]), "rb") as f:
            data = f.read()
        if len(data) != rec["size"]:
            raise FormatError(f"{rec['name']}: {len(data)} bytes, the index says {rec['size']}")
        outside, pos = [], 0
        for begin, end in sorted(ranges.get(rec["name"], [])):
            if begin > pos:
                outside.append(data[pos:begin])
            pos = max(pos, end)
        outside.append(data[pos:])
        if hasher(b"".join(outside)) != rec["meta_xxh3"]:
            raise FormatError(f"{rec['name']}: HDF5 metadata fails meta_xxh3")


def _double(bits):
    return float(np.array(bits, dtype=np.uint64).view(np.float64))


def scalar_value(entry):
    """One scalar of the index as a Python value (doubles from their exact bit patterns)."""
    kind = entry["type"]
    if kind == "double":
        return _double(entry["bits"])
    if kind == "double_list":
        return [_double(b) for b in entry["bits"]]
    if kind in ("int", "bool", "string", "int_list", "string_list"):
        return entry["value"]
    raise FormatError(f"unknown scalar type {kind!r}")


def _checker(verify):
    if not verify:
        return None
    import xxhash  # only for verify=True
    return lambda data: xxhash.xxh3_64_intdigest(data)


def _shard_bytes(ckpt_dir, shard, itemsize, piece_bytes, hasher):
    size = shard["flat_count"] * itemsize
    with open(os.path.join(ckpt_dir, shard["file"]), "rb") as f:
        f.seek(shard["byte_offset"])
        data = f.read(size)
    if len(data) != size:
        raise FormatError(f"{shard['file']}: {size} bytes at {shard['byte_offset']} not there")
    if hasher:
        for k, want in enumerate(shard["xxh3"]):
            if hasher(data[k * piece_bytes:(k + 1) * piece_bytes]) != want:
                raise FormatError(f"{shard['file']}: piece {k} fails its checksum")
    return data


def read_tensor(ckpt_dir, record, piece_bytes=1 << 20, hasher=None):
    """The whole tensor of one index record as a numpy array (bfloat16 widened to float32,
    float8 as its raw uint8 bytes)."""
    stored, itemsize = DTYPES[record["dtype"]]
    numel = int(np.prod(record["shape"], dtype=np.int64))
    flat = np.zeros(numel, dtype=stored)
    covered = 0
    for shard in record["shards"]:
        data = _shard_bytes(ckpt_dir, shard, itemsize, piece_bytes, hasher)
        start = shard["flat_start"]
        flat[start:start + shard["flat_count"]] = np.frombuffer(data, dtype=stored)
        covered += shard["flat_count"]
    if covered != numel:
        raise FormatError(f"{record['path']}: shards cover {covered} of {numel} elements")
    if record["dtype"] == "bfloat16":
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    elif record["dtype"] == "bool":
        flat = flat.astype(np.bool_)
    return flat.reshape(record["shape"])


def read_checkpoint(ckpt_dir, verify=False):
    """Every tensor (numpy array) and scalar (Python value) of a checkpoint, by tree path."""
    hasher = _checker(verify)
    index = read_index(ckpt_dir, hasher)
    if hasher:
        verify_files(ckpt_dir, index, hasher)
    out = {}
    for record in index["tensors"]:
        out[record["path"]] = read_tensor(ckpt_dir, record, index["piece_bytes"], hasher)
    for path, entry in index["scalars"].items():
        out[path] = scalar_value(entry)
    return out


def read_one(ckpt_dir, path):
    """The tensor `path` (packed or not) as a numpy array."""
    index = read_index(ckpt_dir)
    record = next((t for t in index["tensors"] if t["path"] == path), None)
    if record is None:
        raise KeyError(f"no tensor '{path}' in {ckpt_dir}")
    return read_tensor(ckpt_dir, record, index["piece_bytes"], None)


def main(argv):
    if len(argv) not in (2, 3) or any(a.startswith("-") for a in argv[1:]):
        print("usage: read_distckpt.py CKPT [TENSOR]", file=sys.stderr)
        return 2
    try:
        if len(argv) == 3:
            value = read_one(argv[1], argv[2])
            print(f"{argv[2]}  {value.dtype} {list(value.shape)}")
            print(np.array2string(value, threshold=12, edgeitems=3))
            return 0
        state = read_checkpoint(argv[1])
    except (OSError, KeyError, FormatError) as e:
        print(f"read_distckpt: {e}", file=sys.stderr)
        return 1
    for path, value in sorted(state.items()):
        if isinstance(value, np.ndarray):
            print(f"{path}  {value.dtype} {list(value.shape)}")
        else:
            print(f"{path} = {value!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
