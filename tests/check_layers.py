#!/usr/bin/env python3
"""Fails when an #include goes against the layer order (README, Architecture).

Layers, bottom up; a file may include its own folder and any lower layer, never a higher one or
another folder of its own layer:
  0 core   1 layout plan   2 manifest   3 io comm   4 hdf5   5 gpu   6 checkpoint   7 torch pt st
  8 tools   9 examples (they may use the tools' command-line helper)
Public headers (include/distckpt/NAME.h) belong to the layer of the folder that implements them.
Usage: check_layers.py ROOT     (exit 1 and one line per violation)
       check_layers.py --self-test
"""
import os
import re
import sys

LAYERS = {
    "core": 0, "layout": 1, "plan": 1, "manifest": 2, "io": 3, "comm": 3, "hdf5": 4,
    "gpu": 5, "checkpoint": 6, "torch": 7, "pt": 7, "st": 7, "tools": 8, "examples": 9,
}
PUBLIC = {
    "status.h": "core", "tree.h": "core", "options.h": "core",
    "version.h": "core", "manifest.h": "manifest", "env.h": "io",
    "comm.h": "comm", "nccl.h": "gpu", "copy_engine.h": "gpu", "checkpoint.h": "checkpoint", "async.h": "checkpoint",
    "manifest_io.h": "checkpoint", "diff.h": "checkpoint", "state_dict.h": "torch",
    "export.h": "pt", "safetensors.h": "st",
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def folder_of_file(rel):
    parts = rel.split("/")
    if parts[0] == "src" and len(parts) > 2:
        return parts[1]
    if parts[0] in ("tools", "examples"):
        return parts[0]
    if parts[:2] == ["include", "distckpt"]:
        return PUBLIC.get(parts[2])
    return None


def folder_of_include(target):
    if target.startswith("distckpt/"):
        return PUBLIC.get(target[len("distckpt/"):], "?" + target)
    first = target.split("/")[0]
    return first if first in LAYERS else None  # a sibling file of the same folder


def violations(files):
    """files: {relative path: text}. Yields 'path: message' lines."""
    for rel, text in sorted(files.items()):
        mine = folder_of_file(rel)
        if mine is None:
            if rel.startswith("include/distckpt/"):
                yield f"{rel}: public header without a layer (add it to check_layers.py)"
            continue
        for target in INCLUDE.findall(text):
            theirs = folder_of_include(target)
            if theirs is None or theirs == mine:
                continue
            if theirs.startswith("?"):
                yield f"{rel}: includes unknown public header '{target}'"
            elif LAYERS[theirs] >= LAYERS[mine]:
                yield (f"{rel}: '{target}' is in {theirs} (layer {LAYERS[theirs]}), "
                       f"not below {mine} (layer {LAYERS[mine]})")


def read_tree(root):
    files = {}
    for top in ("src", "include", "tools", "examples"):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in names:
                if name.endswith((".h", ".cc", ".cpp", ".cu")):
                    path = os.path.join(dirpath, name)
                    with open(path, errors="replace") as f:
                        files[os.path.relpath(path, root)] = f.read()
    return files


def self_test():
    bad = {
        "src/io/shard_reader.h": '#include "distckpt/checkpoint.h"\n',  # upward
        "src/io/x.cc": '#include "comm/y.h"\n',  # sideways, same layer
        "src/core/y.cc": '#include "layout/filename.h"\n',  # upward
    }
    good = {
        "src/checkpoint/save.cc": '#include "io/shard_reader.h"\n#include "distckpt/env.h"\n',
        "src/io/shard_reader.cc": '#include "io/shard_reader.h"\n#include "core/checksum.h"\n',
    }
    found = list(violations(bad))
    assert len(found) == 3, found
    assert not list(violations(good)), list(violations(good))
    print("self-test: 3 of 3 bad includes caught, good ones pass")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return 0
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    files = read_tree(root)
    found = list(violations(files))
    for line in found:
        print(line)
    print(f"{len(files)} files, {len(found)} include(s) against the layer order")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
