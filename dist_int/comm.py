"""The collectives dist_int uses, in one small module so they can be tested and swapped.

Library code receives a `Comm` and never imports torch.distributed. `Comm` is the world of one rank
(every collective is the identity); `DistComm` runs the same calls over a process group, gloo or NCCL.

Two kinds of collective: *data* collectives (`all_gather`, `all_reduce_sum`) run on the compute device
and never wait for it; *control* collectives (`agree_max`, `all_gather_scalar`, `barrier`) carry a few
Python numbers. With NCCL those go over a separate gloo group on the CPU, so agreeing on a stop signal
never synchronizes the GPU (docs/training.md, "No waste per step").

Control collectives time out after train.timeout_s, which is how a dead rank ends the job. Work that can
take longer than that on one rank (ingesting a source, writing a TIFF, rendering a large shard) must not
be waited for under that timeout: those waits (`long=True`) use a third gloo group whose timeout is days.
A rank that dies meanwhile still ends the wait, since gloo fails a collective whose peer's connection
closes; a host that drops off the network is caught by the heartbeat, a fourth group whose rounds a
thread joins every second (`beat`; engine/watchdog.py; docs/cluster.md, "Lost hosts").
"""

from __future__ import annotations

from datetime import timedelta

import torch

LONG_WORK_TIMEOUT = timedelta(days=7)  # waits on another rank's long work; a dead peer ends them sooner


class Comm:
    """A single process: collectives are identities."""

    rank = 0
    world_size = 1

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """(world_size, *x.shape): every rank's x, which must have the same shape on every rank."""
        return x.unsqueeze(0)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def agree_max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over ranks of a few host numbers (control plane; no device sync)."""
        return [float(v) for v in values]

    def all_gather_scalar(self, value: float) -> torch.Tensor:
        """Every rank's host number, (world_size,) float64 on the CPU (control plane)."""
        return torch.tensor([float(value)], dtype=torch.float64)

    def barrier(self, long: bool = False) -> None:
        pass

    def gather_strings(self, text: str, long: bool = False) -> list[str]:
        """Every rank's string, by rank (control plane; `long`: the wait may last through long work)."""
        return [text]

    def beat(self, going_on: bool):
        """One heartbeat round, started and not waited for: (work, flag), where flag becomes the minimum of
        every rank's going_on (0: some rank has ended) once work.is_completed(). Only a group of processes
        beats (engine/watchdog.py)."""
        raise NotImplementedError("a single process has no peers to hear from")


class DistComm(Comm):
    """Collectives over the default process group; tensors travel on `device`. Control collectives use
    their own gloo group on the CPU (with NCCL, and on CPUs too, so their timeout is always timeout_s)."""

    def __init__(self, rank: int, world_size: int, device: torch.device, timeout_s: float | None = None):
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.world_size, self.device = rank, world_size, device
        # Every rank constructs a DistComm at the same point, as new_group requires. The control group
        # gets the same timeout as the default group, so a dead rank ends the job as configured.
        timeout = timedelta(seconds=timeout_s) if timeout_s else None
        self._cpu_group = dist.new_group(backend="gloo", timeout=timeout)
        self._long_group = dist.new_group(backend="gloo", timeout=LONG_WORK_TIMEOUT)
        # The heartbeat's own group: its rounds run in a thread beside whatever the main thread waits on,
        # and its watchdog, not gloo's timeout, decides when a silence is a loss (engine/watchdog.py).
        self._beat_group = dist.new_group(backend="gloo", timeout=LONG_WORK_TIMEOUT)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).contiguous()
        out = torch.empty((self.world_size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=self.device)
        self._dist.all_gather_into_tensor(out, x)  # ranks' tensors concatenated along dim 0
        return out.view(self.world_size, *x.shape)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.device).clone()
        self._dist.all_reduce(y, op=self._dist.ReduceOp.SUM)
        return y.to(x.device)

    def agree_max(self, values: list[float]) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX, group=self._cpu_group)
        return t.tolist()

    def all_gather_scalar(self, value: float) -> torch.Tensor:
        t = torch.tensor([float(value)], dtype=torch.float64)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self._dist.all_gather(out, t, group=self._cpu_group)
        return torch.cat(out)

    def barrier(self, long: bool = False) -> None:
        self._dist.barrier(group=self._long_group if long else self._cpu_group)

    def beat(self, going_on: bool):
        flag = torch.tensor([1.0 if going_on else 0.0])
        work = self._dist.all_reduce(flag, op=self._dist.ReduceOp.MIN, group=self._beat_group, async_op=True)
        return work, flag

    def gather_strings(self, text: str, long: bool = False) -> list[str]:
        out: list = [None] * self.world_size
        self._dist.all_gather_object(out, text, group=self._long_group if long else self._cpu_group)
        return out
