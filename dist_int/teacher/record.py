"""The replay teacher's error record: the last error observed at every point of this rank's shard.

Every scoring teacher pays a no-grad forward pass over its candidates at every selection: five points
scored for each point trained at INT's first ratio of 0.2. On a hash field the forward is most of a
training step's cost, so on CPUs `int` and `soft` lost to random batches at equal time (docs/fields.md).
The training step computes every trained point's error anyway, so the record keeps it: each step writes the
per-point errors of the points it trained (`observe`), and a selection reads its candidates' last errors
(`scores`) instead of a forward pass. This is prioritized replay (Schaul et al., ICLR 2016) over a signal's
points, or instant-ngp's error map at full resolution: priorities are the last observed errors, points
never observed rank above all others, and the selection samples in proportion to the priorities
(teacher/teacher.py, "replay"; docs/method.md, "A teacher whose scores come free").

Two bytes a point (bfloat16: the range of fp32, 8 bits of mantissa, plenty to order errors), +inf for
"never observed". Where the budget cannot hold two bytes for every point of the shard, the record keeps one
value per cell of 2^shift samples along every axis of a chunk (the maximum error observed in the cell; a
low-resolution error map). Cells never cross chunks, so a cell's points live on one rank whatever the
number of ranks, and the record is saved per chunk: it loads on any number of ranks.
"""

from __future__ import annotations

import math

import numpy as np
import torch

NEVER = float("inf")  # the score of a point never observed: it ranks above every observed one
BYTES = 2             # per value (bfloat16)


def cells_per_chunk(extents: np.ndarray, shift: int) -> np.ndarray:
    """Cells of each chunk at `shift` (extents: (chunks, D) samples per axis)."""
    return np.prod(-(-extents // (1 << shift)), axis=1) if len(extents) else np.zeros(0, dtype=np.int64)


def record_shift(extents: np.ndarray, limit_bytes: int) -> int:
    """The finest cells (0: one value a point) whose record fits `limit_bytes`."""
    most = int(extents.max()) if len(extents) else 1
    for shift in range(0, max(1, math.ceil(math.log2(max(most, 1)))) + 1):
        if int(cells_per_chunk(extents, shift).sum()) * BYTES <= limit_bytes:
            return shift
    return max(1, math.ceil(math.log2(max(most, 1))))  # one cell a chunk


class ErrorRecord:
    def __init__(self, shard, shift: int = 0):
        """shard: this rank's shard (its chunk geometry and row layout); shift: cells of 2^shift samples
        along every axis (0: one value a point)."""
        self.shard = shard
        self._extents = shard.chunk_extents  # (chunks, D)
        self._layout(shift)
        self.values = torch.full((self.num_cells,), NEVER, dtype=torch.bfloat16, device=shard.device)

    def _layout(self, shift: int) -> None:
        self.shift = shift
        counts = cells_per_chunk(self._extents, shift)
        self.cell_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_cells = int(self.cell_start[-1])
        dev = self.shard.device
        self._starts = torch.from_numpy(self.cell_start[:-1].copy()).to(dev)
        self._grid = torch.from_numpy((-(-self._extents // (1 << shift))).T.copy()).to(dev)  # (D, chunks)

    @property
    def num_bytes(self) -> int:
        return self.num_cells * BYTES

    def cells(self, rows: torch.Tensor) -> torch.Tensor:
        """The record index of each shard row, (n,) int64."""
        if self.shift == 0:
            return rows.long()
        chunk, inside = self.shard.in_chunk(rows)
        index = torch.zeros_like(chunk)
        for d, p in enumerate(inside):  # row-major over the chunk's cells, as over its samples
            index = index * self._grid[d].index_select(0, chunk) + (p >> self.shift)
        return self._starts.index_select(0, chunk) + index

    def scores(self, rows: torch.Tensor) -> torch.Tensor:
        """The last observed error of each row (+inf: never observed), (n,) float32."""
        return self.values.index_select(0, self.cells(rows)).float()

    def observe(self, rows: torch.Tensor, errors: torch.Tensor) -> None:
        """Record the errors just measured at `rows` (a cell keeps the largest of its rows' errors)."""
        self.values.scatter_reduce_(0, self.cells(rows), errors.detach().to(torch.bfloat16), reduce="amax",
                                    include_self=False)

    # ---- saved per chunk (teacher/teacher.py writes the files) ----------------------------------------
    def chunk_values(self, i: int) -> np.ndarray:
        """The values of this shard's i-th chunk as uint16 bit patterns (bfloat16), in cell order."""
        lo, hi = int(self.cell_start[i]), int(self.cell_start[i + 1])
        return self.values[lo:hi].view(torch.int16).cpu().numpy().view(np.uint16)

    def load_chunk(self, i: int, bits: np.ndarray, shift: int) -> None:
        """Put back chunk i's values saved at `shift` (resampled when this record's cells differ)."""
        values = torch.from_numpy(bits.astype(np.uint16).view(np.int16)).view(torch.bfloat16)
        if shift != self.shift:
            values = _resample(values, self._extents[i], shift, self.shift)
        lo, hi = int(self.cell_start[i]), int(self.cell_start[i + 1])
        if values.numel() != hi - lo:
            raise ValueError(f"{values.numel()} values for a chunk of {hi - lo} cells")
        self.values[lo:hi] = values.to(self.values.device)

    def coarsen(self, shift: int) -> None:
        """Keep cells of 2^shift samples from now on (a record saved coarser than this start's)."""
        if shift == self.shift:
            return
        parts = [_resample(self.values[int(self.cell_start[i]):int(self.cell_start[i + 1])].cpu(), self._extents[i],
                           self.shift, shift) for i in range(len(self._extents))]
        self._layout(shift)
        self.values = (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bfloat16)).to(self.shard.device)


def _resample(values: torch.Tensor, extent: np.ndarray, old: int, new: int) -> torch.Tensor:
    """One chunk's cell values from cells of 2^old samples per axis to cells of 2^new: the largest of the
    cells merged (coarser), or each cell's value repeated (finer)."""
    old_grid = [int(-(-e // (1 << old))) for e in extent]
    new_grid = [int(-(-e // (1 << new))) for e in extent]
    grid = values.float().reshape(old_grid)
    if new > old:
        f = 1 << (new - old)
        pad = [n * f - o for n, o in zip(new_grid, old_grid)]
        for d, p in enumerate(pad):
            if p:
                shape = list(grid.shape)
                shape[d] = p
                grid = torch.cat([grid, torch.full(shape, -math.inf)], dim=d)
        grid = grid.reshape([x for n in new_grid for x in (n, f)])
        grid = grid.amax(dim=tuple(range(1, 2 * len(new_grid), 2)))
    elif new < old:
        f = 1 << (old - new)
        for d, n in enumerate(new_grid):
            grid = grid.repeat_interleave(f, dim=d).narrow(d, 0, n)
    return grid.reshape(-1).to(torch.bfloat16)
