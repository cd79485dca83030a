"""The collectives dist_int uses, in one small module so they can be tested and swapped.

Library code receives a `Comm` and never imports torch.distributed. `Comm` is the world of one rank
(every collective is the identity); `DistComm` runs the same calls over a process group, gloo or NCCL.
"""

from __future__ import annotations

import torch


class Comm:
    """A single process: collectives are identities."""

    rank = 0
    world_size = 1

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0

    def all_gather_varlen(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        """(world_size, max_len, *x.shape[1:]) holding every rank's x padded with `fill`, and the lengths."""
        return x.unsqueeze(0), torch.tensor([x.shape[0]])

    def all_gather_scalar(self, value: float) -> torch.Tensor:
        return torch.tensor([float(value)], dtype=torch.float64)

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def barrier(self) -> None:
        pass


class DistComm(Comm):
    """Collectives over the default process group. Tensors travel on `device` (CPU for gloo)."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.world_size, self.device = rank, world_size, device

    def all_gather_varlen(self, x: torch.Tensor, fill: float):
        # gloo's all_gather needs equal sizes (NOTES.md): gather the lengths, pad to the longest, gather.
        lengths = self.all_gather_scalar(x.shape[0]).long()
        longest = int(lengths.max())
        padded = torch.full((longest, *x.shape[1:]), fill, dtype=x.dtype, device=self.device)
        padded[: x.shape[0]] = x.to(self.device)
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._dist.all_gather(out, padded)
        return torch.stack(out), lengths

    def all_gather_scalar(self, value: float) -> torch.Tensor:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        self._dist.all_gather(out, t)
        return torch.cat(out).cpu()

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.device).clone()
        self._dist.all_reduce(y, op=self._dist.ReduceOp.SUM)
        return y.to(x.device)

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.device).clone()
        self._dist.all_reduce(y, op=self._dist.ReduceOp.MAX)
        return y.to(x.device)

    def barrier(self) -> None:
        self._dist.barrier()
