"""C++ <-> Python interop with real torch: export, one Python step, import, resume in C++.

usage: python_interop_test.py TRAIN_BIN CLI_BIN MPIRUN WORKDIR
"""
import os
import pickle
import subprocess
import sys
import zipfile

import torch

from checks import check, finish

train, cli, mpirun, work = sys.argv[1:5]
for name in os.listdir(work):  # a fresh start on every run
    subprocess.run(["rm", "-rf", os.path.join(work, name)], check=True)
SEED, BATCH = 1234, 96


def run(*args, **kw):
    return subprocess.run(list(args), check=kw.get("check", True), capture_output=True, text=True)


class Simple(torch.nn.Module):
    """PyTorch's checkpoint-tutorial model, named like distckpt-train --model simple."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(10, 1)

    def forward(self, x):
        return self.linear(x)


def batch(step):
    # distckpt-train's data: sample i is a function of (seed, i); step s takes the next 96.
    xs = []
    for pos in range((step - 1) * BATCH, step * BATCH):
        g = torch.Generator().manual_seed(SEED * 1000003 + pos % 960)
        xs.append(torch.randn(10, generator=g))
    x = torch.stack(xs)
    y = x.sum(1, keepdim=True) * 0.5 + torch.sin(x[:, :2]).sum(1, keepdim=True)
    return x, y


def make_optimizer(kind, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=0.01)
    return torch.optim.Adam(params, lr=0.01)


def max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


for kind in ["sgd", "adam", "adamw"]:
    ck = os.path.join(work, "ck-" + kind)
    run(mpirun, "-np", "2", "--oversubscribe", train, "--ckpt-dir", ck, "--steps", "3",
        "--save-every", "1", "--optimizer", kind, "--model", "simple")
    for s in (2, 3):
        run(cli, "export", f"{ck}/step-{s:08d}", f"{work}/{kind}-{s}.pt")
    ck2 = torch.load(f"{work}/{kind}-2.pt")  # weights_only=True by default
    ck3 = torch.load(f"{work}/{kind}-3.pt", mmap=True)
    check(f"{kind}: layout", set(ck2) >= {"epoch", "model_state_dict", "optimizer_state_dict", "loss"},
          str(sorted(ck2)))
    model = Simple()
    model.load_state_dict(ck2["model_state_dict"])
    opt = make_optimizer(kind, model.parameters())
    opt.load_state_dict(ck2["optimizer_state_dict"])
    x, y = batch(3)
    opt.zero_grad()
    loss = ((model(x) - y) ** 2).sum() / BATCH
    loss.backward()
    opt.step()
    for name, p in model.state_dict().items():
        rel = max_rel(p, ck3["model_state_dict"][name])
        check(f"{kind}: Python step 3 matches C++ step 3 for {name} (rel {rel:.1e})", rel < 1e-5,
              f"rel {rel}")
    check(f"{kind}: loss of step 3 matches", abs(loss.item() - ck3["loss"]) <= 1e-5 * abs(ck3["loss"]),
          f"{loss.item()} vs {ck3['loss']}")

    # Python -> C++: save the Python state, import it, resume the C++ run on 3 ranks.
    torch.save({"epoch": 0, "step": 3, "model_state_dict": model.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "loss": loss.item()},
               f"{work}/{kind}-py3.pt")
    root = os.path.join(work, "imported-" + kind)
    out = run(cli, "import", f"{work}/{kind}-py3.pt", root)
    check(f"{kind}: import", "step-00000003" in out.stdout, out.stdout + out.stderr)
    ref = run(mpirun, "-np", "2", "--oversubscribe", train, "--ckpt-dir", ck, "--steps", "5",
              "--save-every", "0", "--optimizer", kind, "--model", "simple", "--resume")
    res = run(mpirun, "-np", "3", "--oversubscribe", train, "--ckpt-dir", root, "--steps", "5",
              "--save-every", "0", "--optimizer", kind, "--model", "simple", "--resume")
    want = [float(l.split()[3]) for l in ref.stdout.splitlines() if l.startswith("step ")]
    got = [float(l.split()[3]) for l in res.stdout.splitlines() if l.startswith("step ")]
    check(f"{kind}: C++ resumed from the Python checkpoint on 3 ranks continues the run",
          len(got) == 2 and len(want) == 2 and all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(got, want)),
          f"{got} vs {want}")

# A bare state_dict imports as the model part.
torch.save(Simple().state_dict(), f"{work}/bare.pt")
out = run(cli, "import", f"{work}/bare.pt", f"{work}/bare", "--step", "7")
ins = run(cli, "inspect", f"{work}/bare/step-00000007")
check("bare state_dict imports under model_state_dict", "model_state_dict/linear.weight" in ins.stdout,
      out.stderr + ins.stdout)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > " + os.path.join(work, "pwned"),))


torch.save({"model_state_dict": {"w": torch.ones(2)}, "x": Evil()}, f"{work}/evil.pt")
out = run(cli, "import", f"{work}/evil.pt", f"{work}/evil", check=False)
check("a pickle that calls os.system is refused, naming the global",
      out.returncode != 0 and "refusing to load global 'posix.system'" in out.stderr
      and not os.path.exists(os.path.join(work, "pwned")), out.stderr)

good = open(f"{work}/adam-2.pt", "rb").read()
open(f"{work}/cut.pt", "wb").write(good[: len(good) // 2])
out = run(cli, "import", f"{work}/cut.pt", f"{work}/cut", check=False)
check("a truncated .pt is a clear error", out.returncode != 0 and "cut.pt" in out.stderr, out.stderr)
open(f"{work}/text.pt", "w").write("hello")
out = run(cli, "import", f"{work}/text.pt", f"{work}/text", check=False)
check("a file not written by torch.save is a clear error, in the user's words",
      out.returncode != 0 and "text.pt' is not a file written by torch.save" in out.stderr, out.stderr)
with zipfile.ZipFile(f"{work}/adam-2.pt") as zin, zipfile.ZipFile(f"{work}/nostorage.pt", "w") as zout:
    for item in zin.infolist():
        if not item.filename.endswith("/data/0"):
            zout.writestr(item, zin.read(item.filename))
out = run(cli, "import", f"{work}/nostorage.pt", f"{work}/nostorage", check=False)
check("a missing storage record is named", out.returncode != 0 and "data/0" in out.stderr, out.stderr)


# Every file torch.load(weights_only=True, map_location="cpu") reads: the zip format and the
# legacy one (PyTorch < 1.6, or _use_new_zipfile_serialization=False), storages recorded on a CPU
# or on a CUDA device, tensors that share a storage (tied weights, views, a transposed view).
def rich_state():
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(6, 4, generator=g)
    big = torch.randn(8, 3, generator=g)
    model = {"emb.weight": emb, "head.weight": emb,  # tied: one storage
             "part": big[2:5], "part_t": big.t(),   # views into one storage
             "half": torch.randn(3, generator=g).half(), "bf16": torch.randn(5, generator=g).bfloat16(),
             "ids": torch.arange(7), "mask": torch.tensor([True, False, True]),
             "scalar": torch.tensor(2.5, dtype=torch.float64)}
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    return {"epoch": 3, "loss": 0.25, "model_state_dict": model, "optimizer_state_dict": opt.state_dict()}


def save_as(obj, path, zip_format, device):
    """torch.save with the storage location a run on `device` records (the tagger torch.save asks)."""
    def tag(storage):
        return "cuda:0"
    if device == "cuda":
        torch.serialization.register_package(0, tag, lambda storage, location: None)
    try:
        torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    finally:
        torch.serialization._package_registry[:] = [
            p for p in torch.serialization._package_registry if p[1] is not tag]


def raw_pickles(path):
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return b"".join(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    return open(path, "rb").read()


def same_tensors(a, b, prefix=""):
    """Paths where the nested dicts a and b differ (tensors compared bit for bit, dtype included)."""
    bad = []
    for k in a:
        if isinstance(a[k], dict):
            bad += same_tensors(a[k], b.get(k, {}), prefix + str(k) + "/")
        elif isinstance(a[k], torch.Tensor):
            t = b.get(k)
            if not (isinstance(t, torch.Tensor) and t.dtype == a[k].dtype and torch.equal(t, a[k])):
                bad.append(prefix + str(k))
    return bad


for zip_format in (True, False):
    for device in ("cpu", "cuda"):
        name = f"{'zip' if zip_format else 'legacy'}-{device}"
        path = f"{work}/{name}.pt"
        save_as(rich_state(), path, zip_format, device)
        want = torch.load(path, weights_only=True, map_location="cpu")
        out = run(cli, "import", path, f"{work}/{name}", "--step", "1", check=False)
        ok = out.returncode == 0
        if ok:
            run(cli, "export", f"{work}/{name}/step-00000001", f"{work}/{name}-back.pt")
            got = torch.load(f"{work}/{name}-back.pt", weights_only=True)
            bad = same_tensors(want["model_state_dict"], got["model_state_dict"])
            ok = not bad and got["epoch"] == 3 and got["loss"] == 0.25
        check(f"import of a {'zip' if zip_format else 'legacy'}-format torch.save file with storages "
              f"recorded on {device}: every tensor bit-identical to torch.load(map_location='cpu')",
              ok and (device == "cpu" or b"cuda:0" in raw_pickles(path)),
              out.stderr[-500:] + (f" differing: {bad}" if out.returncode == 0 else ""))

# A legacy file cut short names itself.
legacy = open(f"{work}/legacy-cpu.pt", "rb").read()
open(f"{work}/legacy-cut.pt", "wb").write(legacy[: len(legacy) - 40])
out = run(cli, "import", f"{work}/legacy-cut.pt", f"{work}/legacy-cut", check=False)
check("a truncated legacy .pt is a clear error", out.returncode != 0 and "legacy-cut.pt" in out.stderr
      and "past the end" in out.stderr, out.stderr)

# A fresh optimizer's state_dict has "state": {}; it survives import and export.
fresh_model = Simple()
fresh_opt = torch.optim.Adam(fresh_model.parameters(), lr=1e-3)
torch.save({"epoch": 0, "model_state_dict": fresh_model.state_dict(),
            "optimizer_state_dict": fresh_opt.state_dict(), "loss": 0.0}, f"{work}/fresh.pt")
run(cli, "import", f"{work}/fresh.pt", f"{work}/fresh", "--step", "1")
run(cli, "export", f"{work}/fresh/step-00000001", f"{work}/fresh-out.pt")
back = torch.load(f"{work}/fresh-out.pt")
check("an empty optimizer state comes back as state={}",
      back["optimizer_state_dict"].get("state") == {}, str(back["optimizer_state_dict"].keys()))
try:
    torch.optim.Adam(fresh_model.parameters(), lr=1e-3).load_state_dict(back["optimizer_state_dict"])
    check("optimizer.load_state_dict accepts it", True)
except Exception as e:  # noqa: BLE001 - any failure is the finding
    check("optimizer.load_state_dict accepts it", False, repr(e))

# A DCP checkpoint imports one tensor at a time: the import's peak memory grows by far less than
# the state it holds (the same import of a one-tensor checkpoint is the baseline).
def peak_rss_mb(*args):
    """The command's peak resident memory in MiB, its exit code and its stderr. A small Python
    starts it: Linux counts the memory a process had before exec into its peak, and this one
    holds torch and the state."""
    helper = ("import os, subprocess, sys\n"
              "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
              "_, status, usage = os.wait4(p.pid, 0)\n"
              "print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))\n")
    out = subprocess.run([sys.executable, "-S", "-c", helper, *args], capture_output=True,
                         text=True)
    kib, code = out.stdout.split()
    return int(kib) / 1024, int(code), out.stderr


import torch.distributed.checkpoint as dcp  # noqa: E402

big = {"model_state_dict": {f"layer{i}.weight": torch.randn(2048, 1024) for i in range(32)},
       "epoch": 4}
big["model_state_dict"]["head.bias"] = torch.randn(1000).to(torch.bfloat16)
dcp.save(big, checkpoint_id=f"{work}/dcp-big", no_dist=True)
dcp.save({"model_state_dict": {"w": torch.randn(4)}, "epoch": 1}, checkpoint_id=f"{work}/dcp-tiny",
         no_dist=True)
base, code_tiny, err_tiny = peak_rss_mb(cli, "import", f"{work}/dcp-tiny", f"{work}/dcp-tiny-ckpt")
peak, code, err = peak_rss_mb(cli, "import", f"{work}/dcp-big", f"{work}/dcp-big-ckpt")
state_mb = sum(t.numel() * t.element_size() for t in big["model_state_dict"].values()) / 2**20
check(f"a {state_mb:.0f} MiB DCP checkpoint imports in bounded memory: peak {peak:.0f} MiB against "
      f"{base:.0f} MiB for a one-tensor checkpoint (less than half the state more)",
      code == 0 and code_tiny == 0 and peak - base < state_mb / 2, err[-500:] + err_tiny[-500:])
run(cli, "export", f"{work}/dcp-big-ckpt/step-00000004", f"{work}/dcp-big.pt")
back = torch.load(f"{work}/dcp-big.pt", weights_only=True)
bad = same_tensors(big["model_state_dict"], back["model_state_dict"])
check("every tensor of the DCP import bit-identical to what dcp.save was given",
      not bad and back["epoch"] == 4 and run(cli, "verify", f"{work}/dcp-big-ckpt/step-00000004").returncode == 0,
      f"differing: {bad}")

# Metadata whose chunks overlap (two chunks claim the same elements) is refused before anything
# is written.
import shutil  # noqa: E402

shutil.copytree(f"{work}/dcp-tiny", f"{work}/dcp-overlap")
metadata = pickle.load(open(f"{work}/dcp-overlap/.metadata", "rb"))
metadata.state_dict_metadata["model_state_dict.w"].chunks *= 2
pickle.dump(metadata, open(f"{work}/dcp-overlap/.metadata", "wb"))
out = run(cli, "import", f"{work}/dcp-overlap", f"{work}/dcp-overlap-ckpt", check=False)
check("DCP chunks that overlap are refused, naming the tensor, nothing committed",
      out.returncode == 1 and "model_state_dict/w" in out.stderr and "overlap" in out.stderr
      and not os.path.exists(f"{work}/dcp-overlap-ckpt/step-00000001"), out.stderr)

finish()
