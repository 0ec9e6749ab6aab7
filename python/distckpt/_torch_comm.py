"""The engine's collectives over torch.distributed, for jobs started without mpirun (torchrun,
or srun and any launcher that sets up torch.distributed's environment).

Each TorchComm works on a gloo process group of its own: its messages never mix with the
training's collectives (on the default group, NCCL or gloo), and gloo moves the engine's small
host-memory messages without touching a GPU. The engine calls these methods from C++ (holding
the GIL for each call); every byte string goes through uint8 tensors.
"""
import atexit
import datetime
import os
import socket

import torch
import torch.distributed as dist

_MPI_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


def launched_by_mpi():
    return any(k in os.environ for k in _MPI_VARIABLES)


def wanted():
    """Whether this process is one of several started without mpirun: torch.distributed is
    initialised with more than one rank, or the launcher's environment says WORLD_SIZE > 1."""
    if launched_by_mpi() or not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    world = os.environ.get("WORLD_SIZE", "1")
    return world.isdigit() and int(world) > 1


def ensure_process_group():
    """The default process group, initialised from the launcher's environment (env://, as
    torchrun sets it) when the script has not done so itself."""
    if not dist.is_initialized():
        dist.init_process_group()


def _bytes_tensor(data, length):
    """`data` as a uint8 tensor of `length` bytes (zero-padded); one copy."""
    if data and len(data) == length:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)
    t = torch.zeros(length, dtype=torch.uint8)
    if data:
        t[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return t


def _to_bytes(t, length):
    return t[:length].numpy().tobytes()


def _default_store():
    try:
        return dist.distributed_c10d._get_default_store()
    except (RuntimeError, AttributeError, ValueError):
        return None


class TorchComm:
    """Every collective first records, in the launcher's key-value store, that this rank has
    arrived at it (one key per rank, overwritten), so that a rank whose collective timed out
    can name the ranks that never arrived (gloo says only that it waited)."""

    _made = 0  # communicators made by this process; every rank makes them in the same order

    def __init__(self, timeout_seconds):
        ensure_process_group()
        self.timeout = float(timeout_seconds) if timeout_seconds else 1800.0
        self.group = dist.new_group(backend="gloo",
                                    timeout=datetime.timedelta(seconds=self.timeout))
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.backend = "torch.distributed (gloo)"
        TorchComm._made += 1
        self._store = _default_store()
        self._key = f"distckpt/comm{TorchComm._made}/arrived/"
        self._arrived = 0
        self.hosts = [h.decode() for h in self.all_gather(socket.gethostname().encode())]
        # The group goes while Python is whole: left to the interpreter's teardown, gloo's
        # threads can be destroyed unjoined (std::terminate at exit, seen after the script's
        # own destroy_process_group()).
        atexit.register(self.release)

    def release(self):
        group, self.group = self.group, None
        if group is None or not dist.is_initialized():
            return
        try:
            dist.destroy_process_group(group)
        except (RuntimeError, ValueError):
            pass  # already destroyed with the others

    def _arrive(self):
        self._arrived += 1
        if self._store is not None:
            self._store.set(self._key + str(self.rank), str(self._arrived))

    def laggards(self):
        """The ranks that have not arrived at this rank's latest collective, as the store
        records them; [] when it cannot tell."""
        if self._store is None:
            return []
        late = []
        for r in range(self.size):
            key = self._key + str(r)
            try:
                at = int(self._store.get(key)) if self._store.check([key]) else 0
            except (RuntimeError, ValueError):
                return []
            if at < self._arrived:
                late.append(r)
        return late

    def _sizes(self, n):
        mine = torch.tensor([n], dtype=torch.int64)
        out = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(out, mine, group=self.group)
        return [int(x) for x in out]

    def barrier(self):
        self._arrive()
        self._sizes(0)

    def all_gather(self, data):
        self._arrive()
        sizes = self._sizes(len(data))
        longest = max(sizes)
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)]
        dist.all_gather(out, _bytes_tensor(data, longest), group=self.group)
        return [_to_bytes(t, n) for t, n in zip(out, sizes)]

    def gather(self, data, root):
        self._arrive()
        sizes = self._sizes(len(data))
        longest = max(sizes)
        out = [torch.empty(longest, dtype=torch.uint8) for _ in range(self.size)]
        dist.gather(_bytes_tensor(data, longest), out if self.rank == root else None,
                    dst=root, group=self.group)
        return [_to_bytes(t, n) for t, n in zip(out, sizes)] if self.rank == root else []

    def broadcast(self, data, root):
        self._arrive()
        n = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(n, src=root, group=self.group)
        t = _bytes_tensor(data if self.rank == root else b"", int(n))
        dist.broadcast(t, src=root, group=self.group)
        return _to_bytes(t, int(n))

    def all_to_all(self, pieces):
        self._arrive()
        send_sizes = torch.tensor([len(p) for p in pieces], dtype=torch.int64)
        recv_sizes = torch.empty(self.size, dtype=torch.int64)
        dist.all_to_all_single(recv_sizes, send_sizes, group=self.group)
        send = _bytes_tensor(b"".join(pieces), int(send_sizes.sum()))
        recv = torch.empty(int(recv_sizes.sum()), dtype=torch.uint8)
        dist.all_to_all_single(recv, send, output_split_sizes=recv_sizes.tolist(),
                               input_split_sizes=send_sizes.tolist(), group=self.group)
        out, at = [], 0
        for n in recv_sizes.tolist():
            out.append(_to_bytes(recv[at:at + n], n))
            at += n
        return out

    def all_reduce_sum(self, values):
        self._arrive()
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, group=self.group)
        return t.tolist()
