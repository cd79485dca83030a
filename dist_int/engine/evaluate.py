"""Exact PSNR over the whole signal (every rank's sum of squared errors, summed) and over a fixed probe set.

Evaluation runs at fp32 (TF32 where enabled), in pieces of `train.eval_chunk` points whose coordinates and
targets are made piece by piece, and reports PSNR on the source's [0, 1] range whatever range training
uses (signal/targets.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..comm import Comm
from ..model import Predict, forward_rows
from ..model.infer import predict_pieces
from ..render.metrics import psnr_db
from ..teacher import hash_uniform

PROBE_SALT = 0x9B0BE  # keeps the probe set's hash apart from the teacher's


def probe_gids(num_points: int, probe_points: int, seed: int) -> np.ndarray:
    """min(probe_points, num_points) distinct global ids (sorted), a function of the seed only: draw i (i = 0,
    1, 2, ...) is the id floor(u * num_points) for u the counter-based hash of (seed, salt, i), and the
    first probe_points distinct draws are kept (docs/design.md, "Global identities"), so no generator's
    stream, which may change between NumPy releases, decides the set a resumed run watches."""
    if probe_points >= num_points:
        return np.arange(num_points, dtype=np.int64)
    got, drawn = np.zeros(0, dtype=np.int64), 0
    while len(got) < probe_points:
        n = 2 * (probe_points - len(got)) + 64
        u = hash_uniform(torch.arange(drawn, drawn + n), seed, PROBE_SALT)
        drawn += n
        ids = np.concatenate([got, np.minimum((u * num_points).long().numpy(), num_points - 1)])
        first = np.sort(np.unique(ids, return_index=True)[1])  # first draws of each id, in draw order
        got = ids[first[:probe_points]]
    return np.sort(got)


@torch.no_grad()
def sse_rows(predict: Predict, points, rows: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum over the rows and channels of the squared [0, 1]-scale error, float64 on the device."""
    total = torch.zeros((), dtype=torch.float64, device=rows.device)
    for part, pred in forward_rows(predict, points, rows, chunk):
        total += points.target_range.squared_error_unit(pred, points.targets(part))
    return total


class Evaluator:
    def __init__(self, predict: Predict, shard, comm: Comm, num_points: int, num_channels: int, chunk: int,
                 probe_points: int, seed: int, offset_db: float = 0.0):
        """offset_db: added to every PSNR, from the [0, 1] scale to the modality's PSNR range
        (modality/base.py, psnr_offset_db)."""
        self.predict, self.shard, self.comm, self.chunk = predict, shard, comm, chunk
        self.offset_db = offset_db
        self.num_values = num_points * num_channels
        self.num_channels = num_channels
        # A fixed random probe set: probe_points distinct global ids drawn from the seed alone (probe_gids),
        # so the same points for any world size; each rank keeps those in its chunks. Found from the ids,
        # not by a pass over the shard (a streamed billion-point shard took minutes to sweep), and their
        # targets are kept (a few numbers per probe point): a streamed shard reads the probes' chunks once.
        gids = probe_gids(num_points, probe_points, seed)
        self.probe_rows = torch.from_numpy(shard.rows_of(gids)).to(shard.device)
        self.probe_targets = shard.fetch_targets(self.probe_rows)

    def psnr(self) -> float:
        sse = sum(sse_rows(self.predict, self.shard, rows, self.chunk) for _, rows in self.shard.sweep(self.chunk))
        return psnr_db(float(self.comm.all_reduce_sum(sse)), self.num_values) + self.offset_db

    @torch.no_grad()
    def psnr_and_scores(self, error, piece: int) -> tuple[float, torch.Tensor]:
        """The PSNR, and error(f(x), y) of every row of a resident shard in shard order, computed in pieces
        of `piece` rows: the teacher's own pieces, so the errors equal its scoring pass bit for bit and a
        selection right after this evaluation can use them (teacher.offer_scores)."""
        rows = torch.arange(self.shard.num_points, device=self.shard.device)
        sse = torch.zeros((), dtype=torch.float64, device=rows.device)
        scores = []
        for part, pred in forward_rows(self.predict, self.shard, rows, piece):
            targets = self.shard.targets(part)
            sse += self.shard.target_range.squared_error_unit(pred, targets)
            scores.append(error(pred, targets))
        return psnr_db(float(self.comm.all_reduce_sum(sse)), self.num_values) + self.offset_db, torch.cat(scores)

    def probe_psnr(self) -> float:
        """PSNR on the probe set: the divergence guard's signal."""
        rows = self.probe_rows
        sse = torch.zeros((), dtype=torch.float64, device=rows.device)
        with torch.no_grad():
            for part, targets in zip(rows.split(self.chunk), self.probe_targets.split(self.chunk)):
                pred = predict_pieces(self.predict, self.shard.coords(part))
                sse += self.shard.target_range.squared_error_unit(pred, targets)
        count = torch.tensor(float(rows.numel()), dtype=torch.float64, device=sse.device)
        total = self.comm.all_reduce_sum(torch.stack([sse, count])).tolist()
        return psnr_db(total[0], max(int(total[1]), 1) * self.num_channels) + self.offset_db
