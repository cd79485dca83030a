"""Exact PSNR over the whole signal (every rank's sum of squared errors, summed) and over a fixed probe set.

Evaluation runs at fp32 (TF32 where enabled), in pieces of `train.eval_chunk` points, and reports PSNR on
the source's [0, 1] range whatever range training uses (signal/targets.py).
"""

from __future__ import annotations

import torch

from ..comm import Comm
from ..model import Predict
from ..render.metrics import psnr_db, sse_unit
from ..signal import TargetRange
from ..teacher import hash_uniform

PROBE_SALT = 0x9B0BE  # keeps the probe set's hash apart from the teacher's


class Evaluator:
    def __init__(self, predict: Predict, coords: torch.Tensor, targets: torch.Tensor, gids: torch.Tensor,
                 target_range: TargetRange, comm: Comm, num_points: int, num_channels: int, chunk: int,
                 probe_points: int, seed: int):
        self.predict, self.coords, self.targets = predict, coords, targets
        self.target_range, self.comm, self.chunk = target_range, comm, chunk
        self.num_values = num_points * num_channels
        self.num_channels = num_channels
        # A fixed random probe set, the same points for any world size (hashed by global id).
        frac = min(1.0, probe_points / num_points)
        self.probe_rows = torch.nonzero(hash_uniform(gids, seed, PROBE_SALT) < frac).squeeze(1)

    def psnr(self) -> float:
        sse = sse_unit(self.predict, self.coords, self.targets, self.target_range, self.chunk)
        return psnr_db(float(self.comm.all_reduce_sum(sse)), self.num_values)

    def probe_psnr(self) -> float:
        """PSNR on the probe set: the divergence guard's signal."""
        rows = self.probe_rows
        sse = sse_unit(self.predict, self.coords[rows], self.targets[rows], self.target_range, self.chunk)
        count = torch.tensor(float(rows.numel()), dtype=torch.float64, device=sse.device)
        total = self.comm.all_reduce_sum(torch.stack([sse, count])).tolist()
        return psnr_db(total[0], max(int(total[1]), 1) * self.num_channels)
