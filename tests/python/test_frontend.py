"""The Python frontend under mpirun -np 1, 2 and 3 (every rank runs every test, in order).

DISTCKPT_PY_TMP: a fresh directory shared by the ranks; TRAIN_BIN: the C++ demo trainer.
"""
import os

import pytest
import torch

import distckpt

TMP = os.environ["DISTCKPT_PY_TMP"]


@pytest.fixture
def root(request):
    return os.path.join(TMP, request.node.name)


def make(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(10, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def train_step(model, optimizer, epoch, rank, world):
    torch.manual_seed(1000 + epoch)  # the same global batch whatever the rank count
    x = torch.randn(12, 10)
    y = x.sum(1, keepdim=True)
    optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def checkpoint_dict(model, optimizer, epoch, loss):
    return {"epoch": epoch, "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(), "loss": loss}


def test_the_four_key_dict_saved_every_epoch_loads_back(root):
    ckpt = distckpt.Checkpointer(root, timeout=60)
    model, optimizer = make()
    for epoch in range(1, 4):
        loss = train_step(model, optimizer, epoch, ckpt.rank, ckpt.world_size)
        ckpt.save(checkpoint_dict(model, optimizer, epoch, loss), step=epoch)
    assert [c["step"] for c in distckpt.ls(root)] == [1, 2, 3]

    # As torch.load gives it: a fresh dict, then load_state_dict, then one more identical step.
    state = distckpt.load(os.path.join(root, "step-00000003"))
    assert state["epoch"] == 3 and state["loss"] == loss
    assert sorted(state["optimizer_state_dict"]["state"]) == [0, 1]
    assert isinstance(state["optimizer_state_dict"]["param_groups"], list)
    again, again_opt = make(seed=5)
    again.load_state_dict(state["model_state_dict"])
    again_opt.load_state_dict(state["optimizer_state_dict"])
    train_step(model, optimizer, 4, ckpt.rank, ckpt.world_size)
    train_step(again, again_opt, 4, ckpt.rank, ckpt.world_size)
    for a, b in zip(model.parameters(), again.parameters()):
        assert torch.equal(a, b)

    # In place, as DCP does: the tensors of the given dict are filled, the scalars written back.
    other, other_opt = make(seed=7)
    train_step(other, other_opt, 9, ckpt.rank, ckpt.world_size)  # creates the momentum buffers
    target = checkpoint_dict(other, other_opt, 0, 0.0)
    loaded = ckpt.load(target, os.path.join(root, "step-00000002"))
    assert target["epoch"] == 2 and loaded == os.path.join(root, "step-00000002")
    saved = distckpt.load(os.path.join(root, "step-00000002"))
    for name, p in other.named_parameters():
        assert torch.equal(p.detach(), saved["model_state_dict"][name])


def test_shards_save_on_every_rank_and_load_whole(root):
    ckpt = distckpt.Checkpointer(root, timeout=60)
    r, n = ckpt.rank, ckpt.world_size
    whole = torch.arange(60, dtype=torch.float64).reshape(10, 6)
    lo, hi = 10 * r // n, 10 * (r + 1) // n
    flat = torch.arange(17, dtype=torch.int32)
    f0, f1 = 17 * r // n, 17 * (r + 1) // n
    ckpt.save({"rows": distckpt.Shard(whole[lo:hi].clone(), [10, 6], lo),
               "flat": distckpt.Shard(flat[f0:f1].clone(), [17], f0, kind="flat"),
               "betas": (0.9, 0.999), "nothing": None, "names": ["a", "b"]}, step=1)
    back = distckpt.load(os.path.join(root, "step-00000001"))
    assert torch.equal(back["rows"], whole) and torch.equal(back["flat"], flat)
    assert back["betas"] == (0.9, 0.999) and back["nothing"] is None and back["names"] == ["a", "b"]


def test_async_save_keeps_the_snapshot(root):
    ckpt = distckpt.Checkpointer(root, timeout=60)
    w = torch.randn(256, 64)
    original = w.clone()
    handle = ckpt.save_async({"w": w, "epoch": 1}, step=1)
    w.add_(1.0)  # training goes on at once
    assert handle.wait().endswith("step-00000001")
    assert torch.equal(distckpt.load(os.path.join(root, "step-00000001"))["w"], original)


def test_bad_input_raises_the_same_error_everywhere_and_touches_nothing(root):
    ckpt = distckpt.Checkpointer(root, timeout=60)
    with pytest.raises(distckpt.Error, match="device meta"):
        ckpt.save({"w": torch.empty(3, device="meta")}, step=1)
    with pytest.raises(distckpt.Error, match="not a string or an int"):
        ckpt.save({("a", 1): torch.ones(2)}, step=1)
    model, optimizer = make()
    ckpt.save(checkpoint_dict(model, optimizer, 1, 0.5), step=1)
    wrong = torch.nn.Linear(10, 2)
    before = [p.detach().clone() for p in wrong.parameters()]
    with pytest.raises(distckpt.Error) as e:
        ckpt.load({"model_state_dict": wrong.state_dict()})
    assert e.value.code == "mismatch" and "tensor 'model_state_dict/bias'" in str(e.value)
    assert all(torch.equal(a, b) for a, b in zip(before, wrong.parameters()))
    with pytest.raises(ValueError, match="staging_budget"):
        distckpt.Checkpointer(root, staging_budget=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_tensors_through_a_small_staging_budget(root):
    device = torch.device("cuda", distckpt.Checkpointer(root).rank % torch.cuda.device_count())
    ckpt = distckpt.Checkpointer(root, staging_budget=4 << 20)
    torch.manual_seed(3)
    w = torch.randn(3072, 4096, device=device)  # 48 MiB: a dozen pieces of the 4 MiB budget
    ckpt.save({"model_state_dict": {"w": w}, "epoch": 2}, step=1)
    back = {"model_state_dict": {"w": torch.zeros_like(w)}, "epoch": 0}
    ckpt.load(back)
    assert back["epoch"] == 2 and back["model_state_dict"]["w"].is_cuda
    assert torch.equal(back["model_state_dict"]["w"], w)


def test_a_damaged_checkpoint_falls_back(root):
    ckpt = distckpt.Checkpointer(root, timeout=60)
    for step in (1, 2):
        ckpt.save({"w": torch.full((1000,), float(step))}, step=step)
    ckpt.barrier()
    if ckpt.rank == 0:
        newest = os.path.join(root, "step-00000002")
        rank_file = os.path.join(newest, sorted(f for f in os.listdir(newest) if f.startswith("rank-"))[0])
        with open(rank_file, "r+b") as f:
            f.seek(os.path.getsize(rank_file) - 8)
            f.write(b"\xff" * 8)
    ckpt.barrier()
    with pytest.raises(distckpt.Error) as e:
        distckpt.verify(os.path.join(root, "step-00000002"))
    assert e.value.code == "corrupt"
    state = {"w": torch.zeros(1000)}
    messages = []
    with pytest.raises(distckpt.Error) as e:  # named, without fall_back: the damage is an error
        ckpt.load(state, os.path.join(root, "step-00000002"))
    assert e.value.code == "corrupt"
    assert ckpt.load(state, fall_back=True, log=messages.append).endswith("step-00000001")
    assert torch.equal(state["w"], torch.ones(1000))
    if ckpt.rank == 0:
        assert len(messages) == 1 and "falling back" in messages[0], messages
    else:
        assert messages == []


def test_dtensors_on_a_1d_mesh(root):
    import zlib
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    ckpt = distckpt.Checkpointer(root, timeout=60)
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(20000 + zlib.crc32(TMP.encode()) % 20000)
        dist.init_process_group("gloo", rank=ckpt.rank, world_size=ckpt.world_size)
    mesh = init_device_mesh("cpu", (ckpt.world_size,))
    whole = torch.arange(70.0).reshape(7, 10)
    bias = torch.tensor([1.0, 2.0, 3.0])
    d = ckpt.save({"w": distribute_tensor(whole, mesh, [Shard(0)]),
                   "b": distribute_tensor(bias, mesh, [Replicate()])}, step=1)
    back = distckpt.load(d)
    assert torch.equal(back["w"], whole) and torch.equal(back["b"], bias)
    w = distribute_tensor(torch.zeros(7, 10), mesh, [Shard(0)])
    b = distribute_tensor(torch.zeros(3), mesh, [Replicate()])
    ckpt.load({"w": w, "b": b}, d)
    assert torch.equal(w.full_tensor(), whole) and torch.equal(b.to_local(), bias)
    # Other dimensions go through a redistribution (tests/python/test_dtensor.py has 2-D meshes).
    d = ckpt.save({"w": distribute_tensor(whole, mesh, [Shard(1)])}, step=2)
    w = distribute_tensor(torch.zeros(7, 10), mesh, [Shard(1)])
    ckpt.load({"w": w}, d)
    assert torch.equal(w.full_tensor(), whole) and torch.equal(distckpt.load(d)["w"], whole)


def test_export_both_formats(root):
    ckpt = distckpt.Checkpointer(root, timeout=60)
    model, optimizer = make()
    train_step(model, optimizer, 1, ckpt.rank, ckpt.world_size)
    d = ckpt.save(checkpoint_dict(model, optimizer, 1, 0.25), step=1)
    ckpt.barrier()
    if ckpt.rank != 0:
        return
    distckpt.export(d, os.path.join(root, "out.pt"))
    pt = torch.load(os.path.join(root, "out.pt"))
    assert torch.equal(pt["model_state_dict"]["weight"], model.weight.detach())
    distckpt.export(d, os.path.join(root, "model.safetensors"), model_only=True,
                    format="safetensors")
    from safetensors.torch import load_file
    assert torch.equal(load_file(os.path.join(root, "model.safetensors"))["bias"], model.bias.detach())
    assert distckpt.verify(d)["tensors"] >= 4


def test_local_tier_saves_and_resumes_from_the_newer_local_step(root):
    # One host here: no other host for copies (replicas=0); tests/local_tier_test.sh covers hosts.
    local = os.path.join(TMP, "local-tier-node")
    ckpt = distckpt.Checkpointer(root, local_root=local, local_every=1, persist_every=2,
                                 replicas=0, timeout=60)
    for step in (1, 2, 3):
        ckpt.save({"w": torch.full((100,), float(step)), "step": step}, step=step)
    assert sorted(os.listdir(root)) == ["step-00000002"]  # persistent every 2 steps
    assert "step-00000003" in os.listdir(local)
    again = distckpt.Checkpointer(root, local_root=local, replicas=0, timeout=60)
    state = {"w": torch.zeros(100), "step": 0}
    assert again.load(state) == os.path.join(local, "step-00000003")
    assert state["step"] == 3 and torch.equal(state["w"], torch.full((100,), 3.0))
    assert "local step 3" in again.latest_reason and "persistent newest: 2" in again.latest_reason
    with pytest.raises(ValueError):
        distckpt.Checkpointer(root, local_root=local, local_every=0)


def test_tags_name_checkpoints_and_load_by_name(root):
    ckpt = distckpt.Checkpointer(root, keep_last=1, timeout=60)
    for step in (1, 2, 3):
        ckpt.save({"w": torch.full((10,), float(step)), "loss": 1.0 / step}, step=step,
                  tag="best" if step == 2 else None)
    ckpt.barrier()
    listed = {c["step"]: c["tags"] for c in distckpt.ls(root)}
    assert listed == {2: ["best"], 3: []}  # keep_last=1, and the tagged one
    state = {"w": torch.zeros(10), "loss": 0.0}
    assert ckpt.load(state, tag="best") == os.path.join(root, "step-00000002")
    assert torch.equal(state["w"], torch.full((10,), 2.0)) and state["loss"] == 0.5
    if ckpt.rank == 0:
        distckpt.tag(os.path.join(root, "step-00000003"), "best")  # moves the tag
    ckpt.barrier()
    assert ckpt.load(state, tag="best") == os.path.join(root, "step-00000003")
    with pytest.raises(distckpt.Error, match="no tag 'nope'"):
        ckpt.load(state, tag="nope")
    with pytest.raises(distckpt.Error, match="cannot name a tag"):
        ckpt.save({"w": torch.zeros(10)}, step=4, tag="a b")
    assert not os.path.exists(os.path.join(root, "step-00000004"))
