"""distckpt diff on equal, differently sharded, nearly equal, different and unreadable checkpoints.

Checkpoints come from the demo trainer (4 ranks and 2 ranks, plain and ZeRO-1, so that the same
state is stored with different shards and placements) and from .pt files changed in real Python
torch and imported back.
usage: diff_test.py TRAIN_BIN CLI_BIN MPIRUN WORKDIR
"""
import json
import os
import shutil
import subprocess
import sys

import torch

from checks import check, finish

train, cli, mpirun, work = sys.argv[1:5]
shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)


def run(*args):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600)


def trainer(np, root, steps, *extra):
    r = run(mpirun, "-np", str(np), "--oversubscribe", train, "--ckpt-dir", root, "--steps",
            str(steps), "--save-every", "2", "--model", "mlp", *extra)
    assert r.returncode == 0, r.stdout + r.stderr


def diff(a, b, *extra):
    return run(cli, "diff", a, b, *extra)


def step(root, n):
    return os.path.join(root, f"step-{n:08d}")


# The same training state saved by 4 ranks and by 2 ranks resumed from step 2 (the trainer's
# resume is exact), plain and with the optimizer state sharded flat (ZeRO-1).
for mode in ([], ["--zero", "1"]):
    name = "zero1" if mode else "plain"
    four, two = os.path.join(work, name + "-4"), os.path.join(work, name + "-2")
    trainer(4, four, 4, *mode)
    shutil.copytree(four, two)
    shutil.rmtree(step(two, 4))
    trainer(2, two, 4, "--resume", *mode)
    # Per-rank state (the RNG, one row per rank) is the one thing that follows the rank count.
    r = diff(step(four, 4), step(two, 4), "--exclude", "rank_state/")
    check(f"{name}: saved by 4 ranks and by 2 ranks: equal, exit 0", r.returncode == 0 and
          r.stdout.startswith("EQUAL"), r.stdout + r.stderr)
    r = diff(step(four, 4), step(two, 4))
    check(f"{name}: without --exclude the per-rank RNG rows differ in shape, and nothing else",
          r.returncode == 1 and r.stdout.splitlines()[0].startswith("rank_state/rng  shape") and
          "1 difference(s)" in r.stdout, r.stdout + r.stderr)

plain = step(os.path.join(work, "plain-4"), 4)
older = step(os.path.join(work, "plain-4"), 2)
r = diff(older, plain)
check("step 2 against step 4: different, exit 1, values and the loss named",
      r.returncode == 1 and "model_state_dict/fc1.weight" in r.stdout and "loss  scalar" in r.stdout,
      r.stdout + r.stderr)
zero = step(os.path.join(work, "zero1-4"), 4)
r = diff(plain, zero)
check("plain and ZeRO-1 training (the same arithmetic, other placements): equal", r.returncode == 0,
      r.stdout + r.stderr)

# Nearly equal and structurally different, made in Python torch.
pt = os.path.join(work, "state.pt")
assert run(cli, "export", plain, pt).returncode == 0
state = torch.load(pt, weights_only=False)
model = state["model_state_dict"]
near = dict(state, model_state_dict=dict(model))
w = near["model_state_dict"]["fc1.weight"]
near["model_state_dict"]["fc1.weight"] = near_w = w + 1e-6 * w.abs().max()
changed = dict(state, model_state_dict=dict(model))
changed["model_state_dict"]["fc2.bias"] = model["fc2.bias"].double()
changed["model_state_dict"]["fc3.weight"] = model["fc3.weight"].reshape(-1)
del changed["model_state_dict"]["fc1.bias"]
changed["model_state_dict"]["extra.weight"] = torch.zeros(3)
changed["epoch"] = state["epoch"] + 1
roots = {}
for label, value in (("near", near), ("changed", changed), ("same", state)):
    torch.save(value, os.path.join(work, label + ".pt"))
    roots[label] = os.path.join(work, "imported-" + label)
    r = run(cli, "import", os.path.join(work, label + ".pt"), roots[label], "--step", "4")
    assert r.returncode == 0, r.stdout + r.stderr

# Export adds the hyperparameters Python's optimizers have and LibTorch's lack (maximize, ...).
r = diff(plain, step(roots["same"], 4), "--json")
extra = json.loads(r.stdout)["differences"] if r.stdout else [{}]
check("a checkpoint against its own .pt export imported back: every tensor and scalar equal, "
      "only Python's optimizer defaults added", r.returncode == 1 and
      all(d["kind"] == "only in B" and "/param_groups/" in d["path"] for d in extra), r.stdout)
same = step(roots["same"], 4)
r = diff(same, step(roots["near"], 4), "--json")
report = json.loads(r.stdout) if r.returncode in (0, 1) else {}
entry = [d for d in report.get("differences", []) if d["path"] == "model_state_dict/fc1.weight"]
check("nearly equal without tolerance: exit 1, only fc1.weight, in as many elements as torch counts",
      r.returncode == 1 and len(report["differences"]) == 1 and bool(entry) and
      entry[0]["kind"] == "values" and entry[0]["numel"] == w.numel() and
      entry[0]["differing"] == int((near_w != w).sum()), r.stdout + r.stderr)
expected_abs = (near_w.double() - w.double()).abs().max().item()
expected_rel = ((near_w.double() - w.double()).abs() / near_w.double().abs()).max().item()
check("the JSON reports the largest absolute and relative difference", bool(entry) and
      entry[0]["max_abs"] == expected_abs and abs(entry[0]["max_rel"] - expected_rel) <= 1e-12,
      f"{entry[0] if entry else None} vs {expected_abs}, {expected_rel}")
r = diff(same, step(roots["near"], 4), "--atol", "1e-5")
check("nearly equal within --atol 1e-5: equal, exit 0", r.returncode == 0, r.stdout + r.stderr)
r = diff(same, step(roots["near"], 4), "--rtol", f"{expected_rel * 1.01}")
check("nearly equal within an --rtol just above the largest relative difference: equal",
      r.returncode == 0, r.stdout + r.stderr)
r = diff(same, step(roots["near"], 4), "--rtol", f"{expected_rel * 0.99}")
check("and just below it: different", r.returncode == 1, r.stdout + r.stderr)

r = diff(same, step(roots["changed"], 4), "--json")
kinds = {d["path"]: d["kind"] for d in json.loads(r.stdout)["differences"]} if r.stdout else {}
want = {"model_state_dict/fc2.bias": "dtype", "model_state_dict/fc3.weight": "shape",
        "model_state_dict/fc1.bias": "only in A", "model_state_dict/extra.weight": "only in B",
        "epoch": "scalar"}
check("changed: dtype, shape, missing, extra tensor and a changed scalar, each named",
      r.returncode == 1 and kinds == want, f"{kinds} (exit {r.returncode})")

r = diff(plain, work)
check("a directory that is no checkpoint: exit 2, one message naming it",
      r.returncode == 2 and work in r.stderr, r.stdout + r.stderr)
r = diff(plain, plain, "--rtol", "-1")
check("a negative tolerance: exit 2 with one line", r.returncode == 2 and
      len(r.stderr.strip().splitlines()) == 1, r.stderr)
damaged = os.path.join(work, "damaged")
shutil.copytree(plain, damaged)
rank_file = os.path.join(damaged, "rank-00001.h5")
with open(rank_file, "r+b") as f:
    size = os.path.getsize(rank_file)
    f.seek(size - 100)
    byte = f.read(1)
    f.seek(size - 100)
    f.write(bytes([byte[0] ^ 0x10]))
r = diff(plain, damaged)
check("a damaged rank file: exit 2, the file named", r.returncode == 2 and
      "rank-00001.h5" in r.stderr, r.stdout + r.stderr)
finish()
