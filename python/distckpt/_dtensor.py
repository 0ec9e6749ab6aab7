"""DTensors in any placement on meshes of any dimension, as the engine's row shards.

The engine stores a sharded tensor as row ranges, one per rank. A DTensor whose placements
are all Replicate() is replicated, and one whose every mesh dimension is Shard(0) already
holds a contiguous row range per rank: both are saved and loaded in place. Any other layout
(Shard(d) for d > 0, several mesh dimensions on different tensor dimensions, FSDP2's strided
shards, a mix with Replicate()) is redistributed over the mesh to all-Shard(0) to save (a copy
of this rank's share), and loaded into such a copy that is then redistributed back into the
DTensor's own placements. The checkpoint holds the global tensor, whatever the mesh: it loads
onto another mesh, another placement, or plain tensors. Partial() is refused: a pending sum
is not a value.
"""
import logging
from contextlib import contextmanager


def _kinds():
    from torch.distributed.tensor import Partial, Replicate, Shard
    return Partial, Replicate, Shard


def _rows_placements(t):
    _, _, Shard = _kinds()
    return [Shard(0)] * t.device_mesh.ndim


@contextmanager
def _quiet_redistribute():
    """DTensor warns that nested all-gathers on a 2-D mesh are suboptimal; for a checkpoint's
    one-off copy that is expected, not news for the user."""
    logger = logging.getLogger("torch.distributed.tensor._redistribute")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _row_offset(t):
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh,
                                                          _rows_placements(t))
    return list(shape), (int(offset[0]) if len(offset) else 0)


def _check(path, t, error):
    Partial, _, _ = _kinds()
    if any(isinstance(p, Partial) for p in t.placements):
        raise error(f"tensor '{path}': DTensor placements {tuple(t.placements)} hold a pending "
                    "reduction (Partial), which is not a value to save: redistribute it to "
                    "Replicate() or Shard() first", "invalid argument")


def _in_place(t):
    """The engine kind when this DTensor's own local tensor can be saved and loaded as is."""
    _, Replicate, Shard = _kinds()
    if all(isinstance(p, Replicate) for p in t.placements):
        return "replicated"
    if all(type(p) is Shard and p.dim == 0 for p in t.placements):
        return "rows"
    return None


def _entry(path, t, local, kind):
    offset = 0 if kind == "replicated" else _row_offset(t)[1]
    return (path, local, kind, list(t.shape), offset)


def save_entry(path, t, error):
    """(path, local rows, kind, global shape, row offset) for saving DTensor `t`."""
    _check(path, t, error)
    kind = _in_place(t)
    if kind is not None:
        return _entry(path, t, t._local_tensor.detach(), kind)
    with _quiet_redistribute():
        rows = t.detach().redistribute(t.device_mesh, _rows_placements(t))._local_tensor
    return _entry(path, t, rows, "rows")


def load_entry(path, t, error, fixups):
    """The entry to load DTensor `t`: its own local tensor where possible, otherwise a buffer
    of its rows, recorded in `fixups` to be redistributed into `t` after the load."""
    _check(path, t, error)
    kind = _in_place(t)
    if kind is not None:
        return _entry(path, t, t._local_tensor.detach(), kind)
    import torch
    shape, offset = _row_offset(t)
    local = torch.empty(shape, dtype=t.dtype, device=t._local_tensor.device)
    fixups.append((t, local))
    return (path, local, "rows", list(t.shape), offset)


def apply_fixups(fixups):
    """Redistributes each loaded row buffer into its DTensor's own placements, in place."""
    from torch.distributed.tensor import DTensor
    for t, local in fixups:
        rows = DTensor.from_local(local, t.device_mesh, _rows_placements(t), run_check=False,
                                  shape=t.shape, stride=t.stride())
        with _quiet_redistribute():
            mine = rows.redistribute(t.device_mesh, t.placements)._local_tensor
        t._local_tensor.copy_(mine)
