"""Resumes across rank counts and across languages, each job under its own mpirun.

- The Python DDP job (ddp_job.py, Adam) saved on 4 ranks under mpirun at step 3, resumed on 4
  under torchrun (no MPI: the engine over torch.distributed) and on 2 and 1 under mpirun:
  steps 4-6 equal to the run never stopped (on 4 ranks its final checkpoint bit-identical,
  `distckpt diff` exit 0; on 2 and 1 the losses within 1e-6 relative, since DDP's all-reduce
  sums in an order that follows the rank count).
- A script that ends with a background save in flight, under torchrun and under mpirun: the
  save is committed whole and the processes exit cleanly.
- The C++ demo trainer's checkpoint loaded in Python (the model equal to its .pt export), saved
  again from Python, and resumed by the C++ trainer: steps 4-6 identical to its own run.
usage: resume_test.py MPIRUN PYTHON PACKAGE_DIR TRAIN_BIN CLI_BIN WORKDIR
"""
import os
import shutil
import socket
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


def job(np, *args, launcher="mpirun"):
    if launcher == "torchrun":  # args[0] is the Python interpreter
        command = [args[0], "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={np}", *map(str, args[1:])]
    else:
        command = [mpirun, "-np", str(np), "--oversubscribe", *map(str, args)]
    r = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return [line for line in r.stdout.splitlines() if line.startswith("step ")]


def losses(lines):
    return [float(line.split()[-1]) for line in lines]


# Under torchrun a stalled rank makes the others raise within the timeout, naming the collective,
# and nothing is committed; the launcher then ends the job. Mostly waiting: runs beside the rest.
stalled = os.path.join(work, "stalled")
stall_job = subprocess.Popen([python, "-m", "torch.distributed.run", "--standalone",
                              "--nproc_per_node=3", os.path.join(HERE, "stall_job.py"), stalled,
                              "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)

# A script that ends with a background save in flight (no wait()): under either launcher the
# save is committed whole before the processes exit, and they exit cleanly.
exiting = {launcher: subprocess.Popen(
    ([python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
     if launcher == "torchrun" else [mpirun, "-np", "2", "--oversubscribe", python])
    + [os.path.join(HERE, "async_exit_job.py"), os.path.join(work, f"exit-{launcher}")],
    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for launcher in ("torchrun", "mpirun")}

ddp = os.path.join(HERE, "ddp_job.py")
# The run never stopped saves at steps 3 and 6; each resume starts from a copy of its step 3.
reference = job(4, python, ddp, os.path.join(work, "ref"), 6, 3)
for np in (4, 2, 1):
    root = os.path.join(work, f"resume-{np}")
    shutil.copytree(os.path.join(work, "ref"), root)
    shutil.rmtree(os.path.join(root, "step-00000006"))
    rest = job(np, python, ddp, root, 6, 3, "--resume",
               launcher="torchrun" if np == 4 else "mpirun")
    if np == 4:
        diff = subprocess.run([cli, "diff", os.path.join(work, "ref", "step-00000006"),
                               os.path.join(root, "step-00000006")], capture_output=True, text=True)
        ok = rest == reference[3:] and diff.returncode == 0
        detail = f"{rest} vs {reference[3:]}; distckpt diff: {diff.stdout[-500:]}"
    else:
        ok = len(rest) == 3 and all(abs(a - b) <= 1e-6 * abs(b)
                                    for a, b in zip(losses(rest), losses(reference[3:])))
        detail = f"{rest} vs {reference[3:]}"
    check(f"DDP + Adam saved on 4 ranks, resumed on {np}"
          f"{' under torchrun' if np == 4 else ''}: steps 4-6 "
          f"{'and the final state bit-identical' if np == 4 else 'within 1e-6'}", ok, detail)

out, err = stall_job.communicate(timeout=300)
raised = [line for line in out.splitlines() if "raised after" in line]
check("torchrun, rank 1 stalled: ranks 0 and 2 raise distckpt.Error within the 4 s timeout, "
      "naming rank, host and collective and the stalled rank; nothing committed",
      stall_job.returncode != 0 and len(raised) == 2
      and all(float(line.split("raised after ")[1].split()[0]) < 30 for line in raised)
      and all("did not complete within 4 s" in line and "(host " in line for line in raised)
      and all(f"rank 1 (host {socket.gethostname()}) did not arrive" in line for line in raised)
      and not os.path.exists(os.path.join(stalled, "step-00000001")),
      out[-1500:] + err[-1500:])

torch.manual_seed(7)
expected = torch.randn(2048, 1024)
for launcher, p in exiting.items():
    out, err = p.communicate(timeout=300)
    step = os.path.join(work, f"exit-{launcher}", "step-00000001")
    verified = subprocess.run([cli, "verify", step], capture_output=True, text=True)
    ok = p.returncode == 0 and verified.returncode == 0
    if ok:
        ok = torch.equal(distckpt.load(step)["model_state_dict"]["w"], expected)
    check(f"{launcher}: a script that ends with a background save in flight exits cleanly and "
          f"the save is committed whole (verified, bit-identical)", ok,
          f"exit {p.returncode}; {verified.stdout}{verified.stderr}{out[-800:]}{err[-1500:]}")

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
