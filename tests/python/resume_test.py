"""Resumes across rank counts and across languages, each job under its own mpirun.

- The Python DDP job (ddp_job.py, Adam) saved on 4 ranks at step 3, resumed on 4, 2 and 1:
  steps 4-6 equal to the run never stopped (on 4 ranks its final checkpoint bit-identical,
  `distckpt diff` exit 0; on 2 and 1 the losses within 1e-6 relative, since DDP's all-reduce
  sums in an order that follows the rank count).
- The C++ demo trainer's checkpoint loaded in Python (the model equal to its .pt export), saved
  again from Python, and resumed by the C++ trainer: steps 4-6 identical to its own run.
usage: resume_test.py MPIRUN PYTHON PACKAGE_DIR TRAIN_BIN CLI_BIN WORKDIR
"""
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
mpirun, python, package, train, cli, work = sys.argv[1:7]
sys.path.insert(0, package)
import distckpt  # noqa: E402
import torch  # noqa: E402
from checks import check, finish  # noqa: E402

shutil.rmtree(work, ignore_errors=True)
os.makedirs(work)
env = dict(os.environ, PYTHONPATH=package)


def job(np, *args):
    r = subprocess.run([mpirun, "-np", str(np), "--oversubscribe", *map(str, args)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [line for line in r.stdout.splitlines() if line.startswith("step ")]


def losses(lines):
    return [float(line.split()[-1]) for line in lines]


ddp = os.path.join(HERE, "ddp_job.py")
# The run never stopped saves at steps 3 and 6; each resume starts from a copy of its step 3.
reference = job(4, python, ddp, os.path.join(work, "ref"), 6, 3)
for np in (4, 2, 1):
    root = os.path.join(work, f"resume-{np}")
    shutil.copytree(os.path.join(work, "ref"), root)
    shutil.rmtree(os.path.join(root, "step-00000006"))
    rest = job(np, python, ddp, root, 6, 3, "--resume")
    if np == 4:
        diff = subprocess.run([cli, "diff", os.path.join(work, "ref", "step-00000006"),
                               os.path.join(root, "step-00000006")], capture_output=True, text=True)
        ok = rest == reference[3:] and diff.returncode == 0
        detail = f"{rest} vs {reference[3:]}; distckpt diff: {diff.stdout[-500:]}"
    else:
        ok = len(rest) == 3 and all(abs(a - b) <= 1e-6 * abs(b)
                                    for a, b in zip(losses(rest), losses(reference[3:])))
        detail = f"{rest} vs {reference[3:]}"
    check(f"DDP + Adam saved on 4 ranks, resumed on {np}: steps 4-6 "
          f"{'and the final state bit-identical' if np == 4 else 'within 1e-6'}", ok, detail)

# Several processes started without mpirun (as torchrun starts them) are refused, not each
# treated as a world of one that commits its share as the whole state.
plain_env = {k: v for k, v in env.items() if not k.startswith(("OMPI_", "PMI", "PMIX"))}
r = subprocess.run([python, "-c", "import distckpt; distckpt.Checkpointer('unused')"],
                   capture_output=True, text=True, timeout=120,
                   env=dict(plain_env, WORLD_SIZE="2", RANK="1", LOCAL_RANK="1"))
check("a rank started by torchrun (WORLD_SIZE=2, no mpirun) is refused with a clear error",
      r.returncode != 0 and "rank 1 of 2 started without mpirun" in r.stderr
      and not os.path.exists("unused"), r.stderr[-800:])

# C++ -> Python -> C++
cpp = os.path.join(work, "cpp")
want = job(2, train, "--ckpt-dir", os.path.join(work, "cpp-ref"), "--steps", 6, "--save-every", 0,
           "--model", "simple", "--optimizer", "adam")
job(2, train, "--ckpt-dir", cpp, "--steps", 3, "--save-every", 3, "--model", "simple",
    "--optimizer", "adam")
state = distckpt.load(os.path.join(cpp, "step-00000003"))
subprocess.run([cli, "export", os.path.join(cpp, "step-00000003"), os.path.join(work, "cpp.pt")],
               check=True, capture_output=True)
pt = torch.load(os.path.join(work, "cpp.pt"))
check("the C++ trainer's checkpoint in Python: the same model and optimizer state as its .pt",
      all(torch.equal(state["model_state_dict"][k], v) for k, v in pt["model_state_dict"].items())
      and sorted(state["optimizer_state_dict"]["state"]) == [0, 1]
      and isinstance(state["optimizer_state_dict"]["param_groups"][0]["betas"], tuple))
again = os.path.join(work, "from-python")
distckpt.Checkpointer(again).save(state, 3)
rest = job(2, train, "--ckpt-dir", again, "--steps", 6, "--save-every", 3, "--resume",
           "--model", "simple", "--optimizer", "adam")
check("saved again from Python, resumed by the C++ trainer: steps 4-6 identical", rest == want[3:],
      f"{rest} vs {want[3:]}")
finish()
