"""DTensors in any placement and PyTorch DCP checkpoints, under torchrun on 4 ranks (no MPI).

A state of DTensors on a 2x2 mesh (Shard on every dimension, Replicate, FSDP2's strided
shards, 3-D tensors, a tensor smaller than the mesh) plus optimizer state and scalars is saved
by distckpt and by PyTorch DCP; both are loaded onto other meshes, other placements and plain
tensors and compared bit for bit. The DCP checkpoint is then imported with `distckpt import`
and compared, tensor by tensor, with what dcp.load gives.
DISTCKPT_PY_TMP: a fresh directory shared by the ranks; DISTCKPT_CLI: the distckpt command.
"""
import os
import shutil
import subprocess

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.placement_types import _StridedShard

import distckpt

TMP = os.environ["DISTCKPT_PY_TMP"]
SHAPES = {"a": (9, 6), "b": (9, 6), "c": (9, 6), "d": (9, 6), "e": (9, 6), "f": (4, 5, 6),
          "g": (8, 6), "h": (3,)}
SAVED = {"a": [Shard(0), Shard(1)], "b": [Shard(1), Replicate()], "c": [Replicate(), Shard(0)],
         "d": [Shard(0), Shard(0)], "e": [Replicate(), Replicate()], "f": [Shard(2), Shard(1)],
         "g": "fsdp2", "h": [Shard(0), Shard(0)]}


def whole(name):
    """The global value of every tensor, the same on every rank."""
    t = torch.randn(SHAPES[name], generator=torch.Generator().manual_seed(ord(name)))
    return t.to(torch.bfloat16) if name == "c" else t


@pytest.fixture(scope="module")
def ckpt():
    c = distckpt.Checkpointer(os.path.join(TMP, "distckpt"), timeout=120)
    assert dist.is_initialized() and c.world_size == 4, "torchrun --nproc_per_node=4 expected"
    return c


@pytest.fixture(scope="module")
def meshes(ckpt):
    return {"2x2": init_device_mesh("cpu", (2, 2)), "4": init_device_mesh("cpu", (4,)),
            "4x1": init_device_mesh("cpu", (4, 1))}


def fsdp2_tp(t, mesh):
    """FSDP2 over tensor parallelism: rows split across tp, each part split again across dp,
    as FSDP2 places a TP-sharded parameter ([_StridedShard(0, tp), Shard(0)])."""
    dp, tp = mesh.get_coordinate()
    local = t.chunk(2)[tp].chunk(2)[dp].clone()
    return DTensor.from_local(local, mesh, [_StridedShard(0, split_factor=2), Shard(0)],
                              run_check=False, shape=t.shape, stride=t.stride())


def state(layouts, fill=None):
    model = {}
    for name, (mesh, placements) in layouts.items():
        t = whole(name) if fill is None else torch.full_like(whole(name), fill)
        model[name] = fsdp2_tp(t, mesh) if placements == "fsdp2" else \
            distribute_tensor(t, mesh, placements)
    step = torch.tensor(7.0 if fill is None else fill)
    return {"model_state_dict": model, "epoch": 3 if fill is None else 0,
            "loss": 0.25 if fill is None else 0.0,
            "optimizer_state_dict": {
                "state": {0: {"step": step, "exp_avg": model["a"] * 0.5}},
                "param_groups": [{"lr": 0.1 if fill is None else 0.0,
                                  "betas": (0.9, 0.999), "params": [0]}]}}


@pytest.fixture(scope="module")
def saved(ckpt, meshes):
    source = {n: (meshes["2x2"], p) for n, p in SAVED.items()}
    s = state(source)
    assert torch.equal(s["model_state_dict"]["g"].full_tensor(), whole("g"))  # placed as meant
    d = ckpt.save(s, step=3)
    dcp.save(s, checkpoint_id=os.path.join(TMP, "dcp"))
    return source, d


def test_the_checkpoint_holds_the_global_tensors(ckpt, saved):
    source, d = saved
    if ckpt.rank == 0:
        plain = distckpt.load(d)
        for name in source:
            assert torch.equal(plain["model_state_dict"][name], whole(name)), name
        assert plain["epoch"] == 3 and plain["optimizer_state_dict"]["param_groups"][0]["lr"] == 0.1


@pytest.mark.parametrize("target", ["same", "1-D", "4x1", "replicated"])
def test_loads_onto_other_meshes_as_dcp_does(ckpt, meshes, saved, target):
    source, d = saved
    layout = {
        "same": source,
        "1-D": {n: (meshes["4"], [Shard(len(SHAPES[n]) - 1)]) for n in source},
        "4x1": {n: (meshes["4x1"], [Shard(0), Replicate()] if n in "aceg" else
                    [Replicate(), Shard(0)]) for n in source},
        "replicated": {n: (meshes["2x2"], [Replicate(), Replicate()]) for n in source},
    }[target]
    ours, theirs = state(layout, fill=-1.0), state(layout, fill=-2.0)
    assert ckpt.load(ours, d) == d
    dcp.load(theirs, checkpoint_id=os.path.join(TMP, "dcp"))
    assert ours["epoch"] == theirs["epoch"] == 3 and ours["loss"] == theirs["loss"] == 0.25
    pairs = list(ours["model_state_dict"].items()) + [
        ("exp_avg", ours["optimizer_state_dict"]["state"][0]["exp_avg"])]
    for name, t in pairs:
        other = theirs["model_state_dict"].get(name,
                                               theirs["optimizer_state_dict"]["state"][0]["exp_avg"])
        assert t.placements == other.placements, name
        assert torch.equal(t._local_tensor, other._local_tensor), (name, ckpt.rank)
    for name, t in ours["model_state_dict"].items():
        assert torch.equal(t.full_tensor(), whole(name)), name


def test_loads_onto_plain_tensors(ckpt, saved):
    source, d = saved
    flat = {"model_state_dict": {n: torch.zeros_like(whole(n)) for n in source}}
    ckpt.load(flat, d)
    for name in source:
        assert torch.equal(flat["model_state_dict"][name], whole(name)), name


def test_a_pending_reduction_is_refused_everywhere(ckpt, meshes):
    pending = DTensor.from_local(torch.ones(4, 6), meshes["2x2"], [Partial(), Replicate()],
                                 run_check=False)
    with pytest.raises(distckpt.Error) as e:
        ckpt.save({"p": pending}, step=4)
    assert e.value.code == "invalid argument" and "tensor 'p'" in str(e.value)
    assert "Partial" in str(e.value)
    assert not os.path.exists(os.path.join(TMP, "distckpt", "step-00000004"))


def test_a_dcp_checkpoint_imports_byte_for_byte(ckpt, saved):
    source, _ = saved
    ckpt.barrier()
    if ckpt.rank == 0:
        cli = os.environ["DISTCKPT_CLI"]
        root = os.path.join(TMP, "imported")
        out = subprocess.run([cli, "import", os.path.join(TMP, "dcp"), root],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        imported = distckpt.load(os.path.join(root, "step-00000003"))  # step from "epoch"
        expected = {"model_state_dict": {n: torch.zeros_like(whole(n)) for n in source},
                    "epoch": 0, "loss": 0.0,
                    "optimizer_state_dict": {
                        "state": {0: {"step": torch.tensor(0.0),
                                      "exp_avg": torch.zeros_like(whole("a"))}},
                        "param_groups": [{"lr": 0.0, "betas": (0.0, 0.0), "params": [1]}]}}
        dcp.load(expected, checkpoint_id=os.path.join(TMP, "dcp"), no_dist=True)
        for name, t in expected["model_state_dict"].items():
            got = imported["model_state_dict"][name]
            assert got.dtype == t.dtype and torch.equal(got, t), name
        opt, got_opt = expected["optimizer_state_dict"], imported["optimizer_state_dict"]
        for key in ("step", "exp_avg"):
            assert torch.equal(got_opt["state"][0][key], opt["state"][0][key]), key
        assert got_opt["param_groups"] == opt["param_groups"]
        assert imported["epoch"] == expected["epoch"] == 3
        assert imported["loss"] == expected["loss"] == 0.25
        verify = subprocess.run([cli, "verify", os.path.join(root, "step-00000003")],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr

        # A damaged DCP checkpoint: one clear error that names the file, and nothing committed.
        broken = os.path.join(TMP, "dcp-broken")
        shutil.copytree(os.path.join(TMP, "dcp"), broken)
        victim = sorted(f for f in os.listdir(broken) if f.endswith(".distcp"))[0]
        os.truncate(os.path.join(broken, victim), 100)
        out = subprocess.run([cli, "import", broken, os.path.join(TMP, "imported-broken")],
                             capture_output=True, text=True)
        assert out.returncode == 1 and victim in out.stderr, out.stderr
        assert not os.path.exists(os.path.join(TMP, "imported-broken", "step-00000003"))
        os.remove(os.path.join(broken, ".metadata"))
        out = subprocess.run([cli, "import", broken, os.path.join(TMP, "imported-broken")],
                             capture_output=True, text=True)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert "neither a PyTorch DCP checkpoint" in out.stderr, out.stderr
    ckpt.barrier()
