"""One optimizer step on this rank's part of the global teaching set."""

from __future__ import annotations

import torch

from ..comm import Comm


class TrainStep:
    def __init__(self, engine, world_size: int, num_channels: int, device: torch.device):
        self.engine, self.world_size, self.num_channels = engine, world_size, num_channels
        # Summed on the device and read only at log steps: reading a loss every step would make the host
        # wait for the device every step.
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._steps = 0

    def __call__(self, coords: torch.Tensor, targets: torch.Tensor, global_count: int) -> None:
        """coords (n, D) and targets (n, C): this rank's rows; global_count: teaching-set size on all ranks."""
        pred = self.engine(coords).float()                               # (n, C)
        # The update is the gradient of the MSE over the *global* teaching set (docs/design.md, "Loss
        # scaling"): DeepSpeed averages gradients over ranks, so each rank's loss is its share of the
        # global sum of squared errors over the global count, times world_size.
        loss = (pred - targets).square().sum() * (self.world_size / (global_count * self.num_channels))
        self.engine.backward(loss)
        self.engine.step()
        self._loss_sum += loss.detach()
        self._steps += 1

    def mean_loss(self, comm: Comm) -> float:
        """The global training MSE averaged over the steps since the last call (one all-reduce)."""
        # Each rank's loss is scaled by world_size, so the ranks' sum / world_size is the global MSE.
        total = float(comm.all_reduce_sum(self._loss_sum)) / self.world_size / max(self._steps, 1)
        self._loss_sum.zero_()
        self._steps = 0
        return total
