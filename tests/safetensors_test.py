"""Safetensors both ways, with the real ecosystem (safetensors and transformers from PyPI).

A small GPT-2 built from a config (no download) saved by transformers in several shards ->
distckpt import -> verified and exported by 3 ranks at once -> from_pretrained of the export
gives bit-identical logits (float32 and bfloat16). Single-file exports equal the state tensor
by tensor; float8 round-trips; hostile headers are refused with nothing committed; the C++
demo trainer's checkpoint loads into its Python twin.
usage: safetensors_test.py TRAIN_BIN CLI_BIN MPIRUN WORKDIR
"""
import json
import os
import shutil
import struct
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from checks import check, finish

train, cli, mpirun, work = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)


def run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)


def path(*parts):
    return os.path.join(work, *parts)


def committed(root):
    return sorted(d for d in os.listdir(root) if d.startswith("step-")) if os.path.isdir(root) else []


# ---- transformers round trip, float32 and bfloat16 ----
torch.manual_seed(0)
config = GPT2Config(vocab_size=211, n_positions=32, n_embd=64, n_layer=2, n_head=4)
ids = torch.randint(0, 211, (2, 16))
for dtype in (torch.float32, torch.bfloat16):
    name = str(dtype).split(".")[1]
    model = GPT2LMHeadModel(config).to(dtype).eval()
    src = path(f"hf-{name}")
    model.save_pretrained(src, max_shard_size="100KB", safe_serialization=True)
    shards = [f for f in os.listdir(src) if f.endswith(".safetensors")]
    root = path(f"ckpt-{name}")
    r = run(cli, "import", src, root, "--step", "5")
    check(f"{name}: transformers' {len(shards)} shards imported as one checkpoint",
          r.returncode == 0 and len(shards) > 1 and committed(root) == ["step-00000005"],
          r.stdout + r.stderr)
    ckpt = path(f"ckpt-{name}", "step-00000005")
    r = run(cli, "verify", ckpt)
    check(f"{name}: the imported checkpoint verifies", r.returncode == 0, r.stdout + r.stderr)
    out = path(f"export-{name}")
    r = run(mpirun, "-np", "3", "--oversubscribe", cli, "export", ckpt, out, "--format",
            "safetensors", "--model-only", "--max-shard-size", "100KB")
    index = os.path.join(out, "model.safetensors.index.json")
    check(f"{name}: 3 ranks read, verify and write the export in shards with an index",
          r.returncode == 0 and os.path.exists(index) and "by 3 rank(s)" in r.stdout,
          r.stdout + r.stderr)
    if not os.path.exists(index):
        continue
    with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    with open(os.path.join(src, "model.safetensors.index.json")) as f:
        original_map = json.load(f)["weight_map"]
    check(f"{name}: the index names the same {len(weight_map)} tensors as transformers' own",
          sorted(weight_map) == sorted(original_map), f"{sorted(set(weight_map) ^ set(original_map))}")
    shutil.copy(os.path.join(src, "config.json"), out)
    back = GPT2LMHeadModel.from_pretrained(out, torch_dtype=dtype).eval()
    with torch.no_grad():
        want, got = model(ids).logits, back(ids).logits
    check(f"{name}: from_pretrained of the export gives bit-identical logits",
          got.dtype == dtype and torch.equal(want, got), f"max diff {(want - got).abs().max()}")

# ---- a single file: every tensor equal, metadata ----
ckpt = path("ckpt-float32", "step-00000005")
single = path("single.safetensors")
r = run(cli, "export", ckpt, single, "--format", "safetensors", "--model-only")
loaded = load_file(single) if r.returncode == 0 else {}
original = {}
for f in os.listdir(path("hf-float32")):
    if f.endswith(".safetensors"):
        original.update(load_file(path("hf-float32", f)))
check("a single-file export: load_file gives every tensor, bit-identical",
      bool(loaded) and sorted(loaded) == sorted(original) and
      all(torch.equal(loaded[k], original[k]) for k in original), r.stdout + r.stderr)
with safe_open(single, "pt") as f:
    meta = f.metadata()
check("the header's __metadata__ says format pt and the step", meta.get("format") == "pt" and
      meta.get("step") == "5", str(meta))

# ---- float8 and every other dtype through import and export ----
tensors = {
    "f8a": torch.tensor([0.5, -2.0, 448.0, 0.001]).to(torch.float8_e4m3fn),
    "f8b": torch.tensor([1.5, -57344.0, 1e-5]).to(torch.float8_e5m2),
    "bf16": torch.randn(3, 5).to(torch.bfloat16), "f16": torch.randn(4).half(),
    "f64": torch.randn(2, 2).double(), "i8": torch.tensor([-3, 7], dtype=torch.int8),
    "i16": torch.tensor([-300], dtype=torch.int16), "i32": torch.arange(5, dtype=torch.int32),
    "i64": torch.tensor([2**62, -1]), "u8": torch.tensor([0, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]), "empty": torch.zeros(0, 3),
    "scalar": torch.tensor(3.25),
}
save_file(tensors, path("dtypes.safetensors"), metadata={"epoch": "4", "loss": "0.5"})
r = run(cli, "import", path("dtypes.safetensors"), path("dtypes-root"))
r2 = run(cli, "export", path("dtypes-root", "step-00000000"), path("dtypes-out.safetensors"),
         "--format", "safetensors", "--model-only")
back = load_file(path("dtypes-out.safetensors")) if r2.returncode == 0 else {}


def bits(t):
    return t.view(torch.uint8) if t.element_size() == 1 and t.dtype != torch.bool else t


check("every dtype, float8 included, round-trips through import and export bit for bit",
      sorted(back) == sorted(tensors) and all(
          back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(bits(back[k]), bits(v))
          for k, v in tensors.items()), r.stderr + r2.stderr)
r = run(cli, "inspect", path("dtypes-root", "step-00000000"))
check("the metadata's epoch and loss become scalars", "epoch = 4" in r.stdout and
      "loss = 0.5" in r.stdout, r.stdout)

# ---- tied weights in a .pt file (one storage, two names) import as two equal tensors ----
w = torch.randn(7, 3)
torch.save({"model_state_dict": {"embed.weight": w, "head.weight": w}}, path("tied.pt"))
r = run(cli, "import", path("tied.pt"), path("tied-root"))
r2 = run(cli, "export", path("tied-root", "step-00000000"), path("tied.safetensors"), "--format",
         "safetensors", "--model-only")
tied = load_file(path("tied.safetensors")) if r2.returncode == 0 else {}
check("tensors sharing storage in a .pt import as separate tensors of equal content",
      sorted(tied) == ["embed.weight", "head.weight"] and torch.equal(tied["embed.weight"], w) and
      torch.equal(tied["head.weight"], w), r.stderr + r2.stderr)

# ---- hostile and corrupt headers ----
good = open(path("dtypes.safetensors"), "rb").read()


def forged(header, data=b"\0" * 16, length=None):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


cases = {
    "offsets past the end": (forged({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}),
                             "outside the 16 data bytes"),
    "overlapping tensors": (forged({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}),
                            "overlapping"),
    "a gap": (forged({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}), "gap"),
    "a huge header length": (forged({}, length=1 << 40), "header length"),
    "a wrong dtype": (forged({"w": {"dtype": "F99", "shape": [4], "data_offsets": [0, 16]}}),
                      "unsupported dtype"),
    "a shape that disagrees with the bytes": (
        forged({"w": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}), "for shape [5]"),
    "a truncated file": (good[:len(good) - 10], "outside the"),
    "a header that is not JSON": (struct.pack("<Q", 8) + b"{not jso" + b"\0" * 8, "not a JSON"),
}
for label, (blob, expected) in cases.items():
    bad = path("bad.safetensors")
    with open(bad, "wb") as f:
        f.write(blob)
    root = path("bad-root")
    shutil.rmtree(root, ignore_errors=True)
    r = run(cli, "import", bad, root)
    check(f"refused: {label}, naming the problem, nothing committed",
          r.returncode == 1 and expected in r.stderr and "bad.safetensors" in r.stderr and
          committed(root) == [], r.stderr.strip())

# ---- the C++ demo trainer's checkpoint in its Python twin ----


class Mlp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = (torch.nn.Linear(16, 64), torch.nn.Linear(64, 64),
                                        torch.nn.Linear(64, 1))

    def forward(self, x):
        return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


r = run(mpirun, "-np", "2", "--oversubscribe", train, "--ckpt-dir", path("trainer"), "--steps", "3",
        "--save-every", "3")
trained = path("trainer", "step-00000003")
r2 = run(cli, "export", trained, path("trainer.safetensors"), "--format", "safetensors",
         "--model-only")
r3 = run(cli, "export", trained, path("trainer.pt"), "--model-only")
twin = Mlp()
try:
    twin.load_state_dict(load_file(path("trainer.safetensors")), strict=True)
    ok = all(torch.equal(twin.state_dict()[k], v) for k, v in torch.load(path("trainer.pt")).items())
except Exception as e:  # noqa: BLE001 - reported below
    ok, r2 = False, subprocess.CompletedProcess([], 1, "", str(e))
check("the demo trainer's checkpoint loads into its Python twin (strict), equal to the .pt export",
      r.returncode == 0 and ok, r.stderr + r2.stderr)
finish()
