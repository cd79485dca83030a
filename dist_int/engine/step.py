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
                 max_points_per_pass: int = 0, error=None):
        """error: when given, the per-point error of each trained point (the teacher's score, e.g.
        teacher.point_l1) is measured from the step's own forward pass and left in `errors` (the replay
        teacher's record; nothing extra is computed on the network)."""
        self.engine, self.world_size, self.num_channels = engine, world_size, num_channels
        self.max_points_per_pass = max_points_per_pass
        self.error = error
        self.errors: torch.Tensor | None = None  # (n,) float32: the last step's per-point errors
        # Summed on the device and read only at log steps: reading a loss every step would make the host
        # wait for the device every step.
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self._steps = 0

    def accumulate(self, coords: torch.Tensor, targets: torch.Tensor, global_count: int, pieces: int,
                   weights: torch.Tensor | None = None, weight_sum: torch.Tensor | None = None) -> None:
        """Gradients of the global teaching set's MSE, accumulated over `pieces` forward/backward passes.

        The update is the gradient of the MSE over the *global* teaching set (docs/design.md, "Loss
        scaling"): DeepSpeed averages gradients over ranks, so each rank's loss is its share of the global
        sum of squared errors over the global count, times world_size. A sum splits into pieces exactly,
        so the pieces' gradients add up to the one-pass gradient. DeepSpeed runs with
        managed_gradient_accumulation off: backward() only accumulates, step() all-reduces once.

        With importance weights (teacher.importance), each point's squared error is weighted and the sum
        divided by the weights' global sum instead of the count: a weighted mean over the global set.
        """
        scale = self.world_size / ((global_count if weight_sum is None else weight_sum) * self.num_channels)
        n = coords.shape[0]
        start = 0
        errors = []
        for i in range(pieces):
            # Contiguous slices computed on the host (no device read); a rank with fewer rows than
            # another may get empty pieces, which still take part in every collective.
            stop = start + n // pieces + (i < n % pieces)
            rows = slice(start, stop)
            start = stop
            # Pieces of 0 or 1 rows are padded (model.padded): no graph of their own under compile, and an
            # empty piece still gives defined (zero) gradients.
            pred = padded(self.engine, coords[rows]).float()                  # (n_piece, C)
            if weights is None:
                loss = (pred - targets[rows]).square().sum() * scale
            else:
                loss = ((pred - targets[rows]).square().sum(1) * weights[rows]).sum() * scale
            self.engine.backward(loss)
            self._loss_sum += loss.detach()
            if self.error is not None:
                errors.append(self.error(pred.detach(), targets[rows]))
        if self.error is not None:
            self.errors = torch.cat(errors) if errors else torch.zeros(0, device=coords.device)

    def __call__(self, coords: torch.Tensor, targets: torch.Tensor, global_count: int, max_rows: int = 0,
                 weights: torch.Tensor | None = None, weight_sum: torch.Tensor | None = None) -> None:
        """coords (n, D) and targets (n, C): this rank's rows; global_count: teaching-set size on all ranks;
        max_rows: the most rows any rank holds this step (sets the number of pieces); weights, weight_sum:
        importance weights of the rows and their global sum (None: plain mean)."""
        pieces = num_pieces(max(max_rows, coords.shape[0]), self.max_points_per_pass)
        self.accumulate(coords, targets, global_count, pieces, weights, weight_sum)
        self.engine.step()
        self._steps += 1

    def mean_loss(self, comm: Comm) -> float:
        """The global training MSE averaged over the steps since the last call (one all-reduce)."""
        # Each rank's loss is scaled by world_size, so the ranks' sum / world_size is the global MSE.
        total = float(comm.all_reduce_sum(self._loss_sum)) / self.world_size / max(self._steps, 1)
        self._loss_sum.zero_()
        self._steps = 0
        return total
