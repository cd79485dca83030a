"""One optimizer step on this rank's part of the global teaching set, in pieces of bounded size."""

from __future__ import annotations

import math

import torch

from ..comm import Comm
from ..model.infer import padded


def num_pieces(max_rows: int, max_points_per_pass: int) -> int:
    """Forward/backward passes per step: the same on every rank (max_rows is the largest part of the
    teaching set any rank holds), or a collective in the update would wait forever."""
    if max_points_per_pass <= 0:
        return 1
    return max(1, math.ceil(max_rows / max_points_per_pass))


class TrainStep:
    def __init__(self, engine, world_size: int, num_channels: int, device: torch.device,
                 max_points_per_pass: int = 0):
        self.engine, self.world_size, self.num_channels = engine, world_size, num_channels
        self.max_points_per_pass = max_points_per_pass
        # Summed on the device and read only at log steps: reading a loss every step would make the host
        # wait for the device every step.
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._steps = 0

    def accumulate(self, coords: torch.Tensor, targets: torch.Tensor, global_count: int, pieces: int) -> None:
        """Gradients of the global teaching set's MSE, accumulated over `pieces` forward/backward passes.

        The update is the gradient of the MSE over the *global* teaching set (docs/design.md, "Loss
        scaling"): DeepSpeed averages gradients over ranks, so each rank's loss is its share of the global
        sum of squared errors over the global count, times world_size. A sum splits into pieces exactly,
        so the pieces' gradients add up to the one-pass gradient. DeepSpeed runs with
        managed_gradient_accumulation off: backward() only accumulates, step() all-reduces once.
        """
        scale = self.world_size / (global_count * self.num_channels)
        n = coords.shape[0]
        start = 0
        for i in range(pieces):
            # Contiguous slices computed on the host (no device read); a rank with fewer rows than
            # another may get empty pieces, which still take part in every collective.
            stop = start + n // pieces + (i < n % pieces)
            rows = slice(start, stop)
            start = stop
            # Pieces of 0 or 1 rows are padded (model.padded): no graph of their own under compile, and an
            # empty piece still gives defined (zero) gradients.
            pred = padded(self.engine, coords[rows]).float()                  # (n_piece, C)
            loss = (pred - targets[rows]).square().sum() * scale
            self.engine.backward(loss)
            self._loss_sum += loss.detach()

    def __call__(self, coords: torch.Tensor, targets: torch.Tensor, global_count: int, max_rows: int = 0) -> None:
        """coords (n, D) and targets (n, C): this rank's rows; global_count: teaching-set size on all ranks;
        max_rows: the most rows any rank holds this step (sets the number of pieces)."""
        pieces = num_pieces(max(max_rows, coords.shape[0]), self.max_points_per_pass)
        self.accumulate(coords, targets, global_count, pieces)
        self.engine.step()
        self._steps += 1

    def mean_loss(self, comm: Comm) -> float:
        """The global training MSE averaged over the steps since the last call (one all-reduce)."""
        # Each rank's loss is scaled by world_size, so the ranks' sum / world_size is the global MSE.
        total = float(comm.all_reduce_sum(self._loss_sum)) / self.world_size / max(self._steps, 1)
        self._loss_sum.zero_()
        self._steps = 0
        return total
