"""distckpt for Python: verified, parallel, re-shardable checkpoints of the dict you already save.

    import distckpt
    ckpt = distckpt.Checkpointer("ckpts", keep_last=3)        # collective (mpirun, torchrun)
    if ckpt.latest():                                         # resume, if there is a checkpoint
        ckpt.load(state, fall_back=True)                      # (past damaged ones, saying so)
    ckpt.save({"epoch": epoch, "model_state_dict": model.state_dict(),
               "optimizer_state_dict": optimizer.state_dict(), "loss": loss}, step=epoch)

Launched with `mpirun -np N python train.py` or `torchrun --nproc_per_node=N train.py`, every
rank saves its share in parallel and the checkpoint loads on any number of ranks, or with
`distckpt.load(dir)` in one process.
"""
import atexit
import json
import os
import sys
import weakref

import torch


class Error(RuntimeError):
    """Every failure of distckpt: the same message (naming the tensor, file, rank and host) on
    every rank. `code` says which kind: "invalid argument", "not found", "corrupt", "I/O error",
    "mismatch", "aborted" or "internal"."""

    def __init__(self, message, code="internal"):
        super().__init__(message)
        self.code = code


from . import _C  # noqa: E402  (after Error: the engine raises it)
from . import _dtensor, _torch_comm  # noqa: E402

__version__ = _C.version
_LAYOUT = "_distckpt/python_layout"  # how to rebuild the Python containers of a saved dict
_DEVICES = ("cpu", "cuda")


class Shard:
    """This rank's part of a tensor of `global_shape`: rows [offset, offset + len(tensor)) with
    kind="rows", or elements [offset, offset + numel) of the flattened tensor with kind="flat"
    (as ZeRO partitions optimizer state). Plain tensors are replicated (every rank holds all)."""

    def __init__(self, tensor, global_shape, offset, kind="rows"):
        if kind not in ("rows", "flat"):
            raise Error(f"Shard kind must be 'rows' or 'flat', not {kind!r}", "invalid argument")
        self.tensor, self.global_shape, self.offset, self.kind = (
            tensor, [int(d) for d in global_shape], int(offset), kind)


def _is_scalar(v):
    return isinstance(v, (bool, int, float, str))


def _scalar_list(v):
    """A list or tuple of one scalar type (not bool) that the engine stores as one value."""
    if not isinstance(v, (list, tuple)) or any(isinstance(x, bool) for x in v):
        return False
    return all(isinstance(x, int) for x in v) or all(isinstance(x, float) for x in v) or \
        all(isinstance(x, str) for x in v)


def _entry(path, value, fixups=None):
    """The engine's entry for `value`; `fixups` (when loading) collects DTensors that are
    loaded through a buffer of rows and redistributed afterwards."""
    if type(value).__name__ == "DTensor":
        if fixups is None:
            return _dtensor.save_entry(path, value, Error)
        return _dtensor.load_entry(path, value, Error, fixups)
    if isinstance(value, Shard):
        t, kind, shape, offset = value.tensor, value.kind, value.global_shape, value.offset
    else:
        t, kind, shape, offset = value, "replicated", list(value.shape), 0
    if t.device.type not in _DEVICES:
        raise Error(f"tensor '{path}' is on device {t.device}, which distckpt cannot save",
                    "invalid argument")
    return (path, t.detach(), kind, shape, offset)


def _walk(value, path, entries, scalars, layout):
    """Flattens `value` at `path`; `layout` records what the flat paths cannot say."""
    if isinstance(value, dict):
        layout[path] = {"type": "dict", "int_keys": [k for k in value if isinstance(k, int)]}
        for key, v in value.items():
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise Error(f"key {key!r} under '{path}' is not a string or an int",
                            "invalid argument")
            if "/" in str(key):
                raise Error(f"key {key!r} under '{path}' contains '/'", "invalid argument")
            _walk(v, f"{path}/{key}" if path else str(key), entries, scalars, layout)
    elif isinstance(value, (torch.Tensor, Shard)):
        entries.append(_entry(path, value))
    elif value is None:
        layout[path] = {"type": "none"}
    elif _is_scalar(value):
        scalars[path] = value
    elif _scalar_list(value):
        scalars[path] = list(value)
        if isinstance(value, tuple):
            layout[path] = {"type": "tuple"}
    elif isinstance(value, (list, tuple)):
        layout[path] = {"type": type(value).__name__}
        for i, v in enumerate(value):
            _walk(v, f"{path}/{i}", entries, scalars, layout)
    else:
        raise Error(f"'{path}': cannot save a {type(value).__name__}", "invalid argument")


def _flatten(state):
    if not isinstance(state, dict):
        raise Error("the state to save must be a dict", "invalid argument")
    entries, scalars, layout = [], {}, {}
    _walk(state, "", entries, scalars, layout)
    scalars[_LAYOUT] = json.dumps(layout)
    return entries, scalars


def _set_scalars(state, scalars, path=""):
    """Writes loaded scalars back into the dict the caller passed, where it has them."""
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for key, v in list(items):
        p = f"{path}/{key}" if path else str(key)
        if isinstance(v, (dict, list)) and not _scalar_list(v):
            _set_scalars(v, scalars, p)
        elif p in scalars and (_is_scalar(v) or _scalar_list(v)):
            new = scalars[p]
            state[key] = tuple(new) if isinstance(v, tuple) else new


def _rebuild(flat, layout):
    """A nested dict from flat paths: containers as `layout` recorded them (a checkpoint saved
    from Python), else as the C++ training layout implies (param_groups a list, integer keys
    under optimizer state, betas a tuple)."""
    root = {}
    paths = sorted(set(flat) | {p for p, info in layout.items() if info["type"] == "none"})
    for path in paths:
        node, parts = root, path.split("/")
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
        value = None if layout.get(path, {}).get("type") == "none" else flat[path]
        if layout.get(path, {}).get("type") == "tuple" or (not layout and parts[-1] == "betas"):
            value = tuple(value)
        node[parts[-1]] = value
    return _shape(root, "", layout)


def _shape(node, path, layout):
    if not isinstance(node, dict):
        return node
    info = layout.get(path)
    kind = info["type"] if info else None
    keys = list(node)
    if kind in ("list", "tuple") or (not layout and path.endswith("param_groups")):
        items = [_shape(node[k], f"{path}/{k}", layout) for k in sorted(keys, key=int)]
        return tuple(items) if kind == "tuple" else items
    int_keys = {str(k) for k in info["int_keys"]} if info else (
        set(keys) if path.endswith("/state") and all(k.isdigit() for k in keys) else set())
    return {(int(k) if k in int_keys else k): _shape(v, f"{path}/{k}" if path else k, layout)
            for k, v in node.items()}


def _tensor_entries(state, path=""):
    """(path, tensor-or-Shard) for every tensor in the caller's dict."""
    items = state.items() if isinstance(state, dict) else enumerate(state)
    for key, v in items:
        p = f"{path}/{key}" if path else str(key)
        if isinstance(v, (torch.Tensor, Shard)):
            yield p, v
        elif isinstance(v, (dict, list, tuple)):
            yield from _tensor_entries(v, p)


class AsyncSave:
    """A save running in the background; wait() returns its directory or raises its Error."""

    def __init__(self, owner):
        self._owner = owner

    def wait(self):
        return self._owner._engine.wait()


def _finish_in_flight(checkpointer):
    """At interpreter exit: waits for the background save of `checkpointer` (a weak
    reference), saying on stderr if it failed."""
    ckpt = checkpointer()
    if ckpt is None:
        return
    try:
        ckpt._engine.wait()
    except Error as e:
        print(f"distckpt: the background save in flight at exit failed: {e}", file=sys.stderr)


class Checkpointer:
    """Checkpoints under `root`. Collective in a job of several processes, started by mpirun
    or by torchrun (or any launcher that sets up torch.distributed): every rank constructs it
    and makes the same calls in the same order; one process otherwise. Under torchrun the
    engine talks over a gloo process group of its own, beside the training's (the default
    group is initialised from the launcher's environment if the script has not done it). Retention keeps the `keep_last`
    newest and the `keep_best` best by scalar `metric`; `timeout` bounds how long a rank may be
    late to a checkpoint step before the job is ended naming it. CUDA tensors are saved and
    loaded through `staging_budget` bytes of page-locked host memory per rank, whatever their
    size.

    The local tier: with `local_root` (a node-local directory, the same path on every host, e.g.
    under /dev/shm), save(state, step) writes a local step every `local_every` steps, each
    rank's file copied to `replicas` other hosts, and the persistent root every
    `persist_every` steps; load() after a lost host resumes from the newest step the surviving
    hosts hold, on any number of ranks, without reading the persistent root
    (`latest_reason` says which step and why)."""

    def __init__(self, root, keep_last=0, keep_best=0, metric="loss", higher_is_better=False,
                 timeout=600.0, save_timeout=0.0, staging_budget=256 << 20, local_root=None,
                 local_every=1, persist_every=1, replicas=1, local_keep=2):
        if int(staging_budget) <= 0:
            raise ValueError(f"staging_budget must be a positive number of bytes, "
                             f"not {staging_budget}")
        for name, value in (("local_every", local_every), ("persist_every", persist_every),
                            ("local_keep", local_keep)):
            if int(value) <= 0:
                raise ValueError(f"{name} must be a positive number of steps, not {value}")
        if int(replicas) < 0:
            raise ValueError(f"replicas must be 0 or more, not {replicas}")
        self.root = str(root)
        torch_comm = async_comm = None
        if _torch_comm.wanted():  # torchrun and other launchers of torch.distributed
            torch_comm = _torch_comm.TorchComm(timeout)
            async_comm = lambda: _torch_comm.TorchComm(timeout)  # noqa: E731
        self._engine = _C.Checkpointer(self.root, keep_last, keep_best, metric,
                                       higher_is_better, float(timeout), float(save_timeout),
                                       int(staging_budget), str(local_root or ""),
                                       int(local_every), int(persist_every), int(replicas),
                                       int(local_keep), torch_comm, async_comm)

    @property
    def rank(self):
        return self._engine.rank

    @property
    def world_size(self):
        return self._engine.size

    def save(self, state, step, tag=None):
        """Saves the nested dict `state` as checkpoint `step`; returns its directory. With
        `tag` ("best"), the step goes to the persistent root whatever the cadence and is named
        `tag` (moved from an older checkpoint if it named one); retention keeps it."""
        entries, scalars = _flatten(state)
        return self._engine.save(entries, scalars, int(step), _tag_name(tag))

    def save_async(self, state, step, tag=None):
        """Snapshots this rank's share of `state` and saves it in the background; the model may
        change as soon as this returns. One save in flight: the next waits for this one."""
        entries, scalars = _flatten(state)
        self._engine.save_async(entries, scalars, int(step), _tag_name(tag))
        if not getattr(self, "_finish_at_exit", False):
            # A script that ends without wait() still commits its last save: this runs before
            # the exit handlers registered earlier (the process groups' release among them).
            self._finish_at_exit = True
            atexit.register(_finish_in_flight, weakref.ref(self))
        return AsyncSave(self)

    def load(self, state, dir=None, fall_back=False, log=print, tag=None):
        """Fills every tensor of `state` in place from checkpoint `dir` (default: the newest;
        with `tag`, the checkpoint that tag names), all or nothing, and writes its scalars back
        into `state`. With `fall_back`, a damaged checkpoint is reported through `log` (on
        rank 0) and the next older one is loaded instead. Returns the directory loaded;
        Error("not found") when there is none."""
        if tag is not None:
            if dir is not None:
                raise ValueError("give dir or tag, not both")
            dir = _C.find_tag(self.root, str(tag))
        fixups = []
        entries = [_entry(p, v, fixups) for p, v in _tensor_entries(state)]
        loaded, scalars = self._engine.load("" if dir is None else str(dir), entries,
                                            bool(fall_back), log)
        _dtensor.apply_fixups(fixups)
        scalars.pop(_LAYOUT, None)
        _set_scalars(state, scalars)
        return loaded

    def latest(self):
        """The newest checkpoint to resume from (with a local tier, possibly a local step that
        this call first gathers onto every host); None when there is none."""
        return self._engine.latest()

    @property
    def latest_reason(self):
        """Which checkpoint the last latest() or load() chose, and why."""
        return self._engine.latest_reason

    def barrier(self):
        self._engine.barrier()


def _tag_name(tag):
    return "" if tag is None else str(tag)


def tag(dir, name):
    """Names checkpoint `dir` `name` (tagging again moves the name); retention keeps it."""
    _C.tag(str(dir), str(name))


def load(dir):
    """A checkpoint as a fresh nested dict of CPU tensors and values, as torch.load gives it;
    one process, with or without mpirun."""
    tensors, scalars, _ = _C.describe(str(dir))
    layout = json.loads(scalars.pop(_LAYOUT, "{}"))
    made = {p: torch.empty(shape, dtype=getattr(torch, dtype)) for p, dtype, shape in tensors}
    _C.load_local(str(dir), [(p, t, "replicated", list(t.shape), 0) for p, t in made.items()])
    return _rebuild({**scalars, **made}, layout)


def export(dir, path, model_only=False, format="pt"):
    """One .pt file for torch.load, or Hugging Face safetensors (format="safetensors")."""
    _C.export(str(dir), str(path), bool(model_only), format)


def verify(dir):
    """Reads every byte and checks every checksum; raises Error naming what is damaged."""
    return _C.verify(str(dir))


def ls(root):
    """Every checkpoint directory under `root`, oldest first, with step, epoch, loss and tags."""
    return _C.ls(str(root))
