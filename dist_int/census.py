"""A census of what would make the host wait for a GPU, taken on any device (docs/training.md, "No waste
per step").

On a GPU the host queues work and the device runs it; any operation whose result the host needs (a value
read back, an output whose size depends on the data, a copy from pageable host memory) makes the host
wait until the device has caught up, and the queue runs dry. Such waits cannot be seen on a CPU, where
nothing is queued, but the operations that cause them can: `SyncCensus` watches the torch operations of
its thread (a TorchDispatchMode) and the Python calls that move data between host and device, and counts
  - device reads: `aten._local_scalar_dense` (`.item()`, `int(t)`, `float(t)`, `bool(t)`, `if t:`, indexing
    with a 0-d tensor), and `.tolist()` / `.numpy()` of a tensor made by device operations;
  - data-dependent shapes: `nonzero`, `masked_select`, boolean indexing, `unique`, `repeat_interleave`
    without `output_size`;
  - host data sent to the device: `.to(device)` of a tensor made on the host (from numpy or Python
    values) that is not pinned for a non-blocking copy (`host_buffer` marks a buffer that is pinned on
    a GPU).
It also counts every operation dispatched (about one kernel launch each on a GPU), so a regression in
launches per step shows on a CPU (bench/profile_step.py).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import traceback
import weakref

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Operations whose output size or value the host must know before it can go on.
_SHAPE_OPS = {aten.nonzero.default, aten.masked_select.default, aten.unique_consecutive.default,
              aten._unique2.default, aten._unique.default, aten.unique_dim.default}
_READ_OPS = {aten._local_scalar_dense.default}
_FREE = {aten.detach.default, aten.view.default, aten._unsafe_view.default, aten.alias.default,
         aten.t.default, aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default, aten.select.int,
         aten.slice.Tensor, aten.as_strided.default, aten.permute.default, aten.transpose.int}

class _Marks:
    """A set of live tensors by identity (a WeakSet would compare tensors with ==, element by element)."""

    def __init__(self):
        self._refs: dict[int, weakref.ref] = {}

    def add(self, t: torch.Tensor) -> None:
        key = id(t)
        self._refs[key] = weakref.ref(t, lambda _, key=key: self._refs.pop(key, None))

    def __contains__(self, t) -> bool:
        ref = self._refs.get(id(t))
        return ref is not None and ref() is t


_PINNED = _Marks()  # tensors pinned on a GPU (host_buffer): their non-blocking copies do not wait


def host_buffer(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An empty host tensor for data on its way to `device`: pinned page-locked memory on a GPU, so that a
    `.to(device, non_blocking=True)` of it is queued without a wait (and counted as such by the census)."""
    cuda = torch.device(device).type == "cuda"
    t = torch.empty(shape, dtype=dtype, pin_memory=cuda)
    _PINNED.add(t)
    return t


def to_device(values: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on `device` without making the host wait: copied into a `host_buffer` and sent
    with a non-blocking copy (a plain copy from pageable memory waits on a GPU)."""
    buf = host_buffer(values.shape, torch.from_numpy(values[:0]).dtype, device)
    buf.numpy()[...] = values
    return buf.to(device, non_blocking=True)


def _is_pinned(t: torch.Tensor) -> bool:
    return t in _PINNED or (t.is_pinned() if torch.cuda.is_available() else False)


_HOST_SIDE = threading.local()


@contextlib.contextmanager
def host_side():
    """Marks work on host tensors only (control values made without a device: window deals, chunk
    orders). On a GPU such tensors never touch the device, but on a CPU they look like any other, so the
    census needs to be told; it counts nothing inside."""
    depth = getattr(_HOST_SIDE, "depth", 0)
    _HOST_SIDE.depth = depth + 1
    try:
        yield
    finally:
        _HOST_SIDE.depth = depth


def _on_host_side() -> bool:
    return getattr(_HOST_SIDE, "depth", 0) > 0


class SyncCensus(TorchDispatchMode):
    """with SyncCensus(device) as census: ...  then census.syncs (total), census.counts (by kind), census.ops
    (operations dispatched). Counts only this thread's operations (a prefetcher thread is not the step)."""

    def __init__(self, device: torch.device | str = "cpu", where: bool = False):
        """where: also record, per kind, the innermost frames outside torch that caused each count
        (census.where), to find a sync."""
        super().__init__()
        self.device = torch.device(device)
        self.where: collections.Counter = collections.Counter()
        self._trace = where
        self.counts: collections.Counter = collections.Counter()
        self.ops = 0
        self._host_made = _Marks()  # tensors built from host data (or from host tensors only) in the census
        self._device_made = _Marks()
        self._patches: list = []

    def mark_host(self, tensors) -> None:
        """Tensors that live on the host even in a GPU run (an optimizer's step counters): reading them
        makes no wait."""
        for t in tensors:
            self._host_made.add(t)

    def _count(self, kind: str) -> None:
        self.counts[kind] += 1
        if self._trace:
            frames = [f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename
                      and not f.filename.endswith("census.py")]
            self.where[(kind, " <- ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in frames[-3:][::-1]))] += 1

    @property
    def syncs(self) -> int:
        return sum(self.counts.values())

    def _host(self, t) -> bool:
        return isinstance(t, torch.Tensor) and (t in self._host_made or t in _PINNED)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in _flat(args) + _flat(list(kwargs.values())) if isinstance(a, torch.Tensor)]
        # Work on host tensors only (control values, numpy views) never waits for a device.
        host = _on_host_side() or (bool(tensors) and all(self._host(t) for t in tensors))
        if not host:
            if func in _READ_OPS:
                self._count("read a device value")
            elif func in _SHAPE_OPS:
                self._count(f"data-dependent size ({func._schema.name.split('::')[-1]})")
            elif func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default) and any(
                    isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or []) if i is not None):
                self._count("boolean indexing")
            elif func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor) and \
                    kwargs.get("output_size") is None:
                self._count("repeat_interleave without output_size")
            if func not in _FREE:
                self.ops += 1
        out = func(*args, **kwargs)
        made = self._host_made if host else self._device_made
        for t in _flat(out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                made.add(t)
        return out

    # ---- host <-> device moves, seen at the Python level --------------------------------------------
    def __enter__(self):
        census = self
        mine = threading.get_ident()  # the patches count this thread only, like the dispatch mode
        real_from_numpy, real_tensor, real_to = torch.from_numpy, torch.tensor, torch.Tensor.to
        real_tolist, real_numpy = torch.Tensor.tolist, torch.Tensor.numpy

        def from_numpy(a):
            t = real_from_numpy(a)
            if threading.get_ident() != mine or _on_host_side():
                census._host_made.add(t)
                return t
            census._host_made.add(t)
            return t

        def tensor(data, *args, **kwargs):
            t = real_tensor(data, *args, **kwargs)
            if threading.get_ident() != mine or _on_host_side():
                census._host_made.add(t)
                return t
            dev = kwargs.get("device")
            if dev is not None and torch.device(dev).type == census.device.type and not isinstance(data, torch.Tensor):
                census._count("host data sent to the device (torch.tensor)")
            else:
                census._host_made.add(t)
            return t

        def to(self, *args, **kwargs):
            if threading.get_ident() != mine or _on_host_side():
                return real_to(self, *args, **kwargs)
            target = kwargs.get("device", next((a for a in args if isinstance(a, (torch.device, str))), None))
            if target is not None and torch.device(target).type == census.device.type and self in census._host_made:
                if not (_is_pinned(self) and kwargs.get("non_blocking", False)):
                    census._count("pageable host data copied to the device")
            return real_to(self, *args, **kwargs)

        def tolist(self):
            if threading.get_ident() == mine and not _on_host_side() and not census._host(self):
                census._count("read a device value (tolist)")
            return real_tolist(self)

        def numpy(self, *args, **kwargs):
            if threading.get_ident() == mine and not _on_host_side() and not census._host(self):
                census._count("read a device value (numpy)")
            return real_numpy(self, *args, **kwargs)

        self._patches = [(torch, "from_numpy", real_from_numpy), (torch, "tensor", real_tensor),
                         (torch.Tensor, "to", real_to), (torch.Tensor, "tolist", real_tolist),
                         (torch.Tensor, "numpy", real_numpy)]
        torch.from_numpy, torch.tensor = from_numpy, tensor
        torch.Tensor.to, torch.Tensor.tolist, torch.Tensor.numpy = to, tolist, numpy
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for owner, name, real in self._patches:
                setattr(owner, name, real)
            self._patches = []


def optimizer_host_tensors(optimizer) -> list[torch.Tensor]:
    """The step counters torch's Adam keeps on the host (all but its capturable and fused forms, which
    keep them on the device): the optimizer reads them every step, without a device wait on a GPU."""
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed wraps some optimizers
    out = []
    for group in getattr(inner, "param_groups", []):
        if group.get("capturable") or group.get("fused"):
            continue
        for p in group["params"]:
            step = inner.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor):
                out.append(step)
    return out


def _flat(values) -> list:
    out = []
    for v in values:
        if isinstance(v, (list, tuple)):
            out += _flat(v)
        else:
            out.append(v)
    return out
