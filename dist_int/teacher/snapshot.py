"""Teaching-set snapshots: where the teacher's points lie at chosen steps (`train.snapshot_every`).

The INT paper shows the selected pixels as a picture (its Fig. 1 and Fig. 5); a gigapixel teaching set
cannot be saved point by point, so a snapshot is a histogram on a bounded grid: every rank counts its
selected points and all its points per cell and writes its own file. Counts add up, so the sum over the
rank files is the same for any number of ranks (docs/design.md, "Teaching-set snapshots"), and
`python -m dist_int report` draws the fraction of the points picked per cell. The denominator is every
point of the shard, not the step's candidates: a mini-batch run may train on a set selected from an
earlier epoch's batch, whose candidates are no longer at hand.

The grid has at most SNAPSHOT_CELLS cells: each axis of a grid signal is binned by a whole factor, so a
256^2 image keeps every pixel and a 65536^2 one sums 32x32 blocks; a point table (a shape's samples) is
binned by its coordinates over [-1, 1]^D.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..files import replaced_when_done

SNAPSHOT_CELLS = 1 << 22


def snapshot_grid(store) -> tuple[list[int], list[int]]:
    """(cells per axis, points per cell along each axis: 0 for a table's coordinate axes)."""
    if store.table:
        edge = int(round(SNAPSHOT_CELLS ** (1 / store.in_dims)))
        return [edge] * store.in_dims, [0] * store.in_dims
    edge = int(SNAPSHOT_CELLS ** (1 / len(store.spatial)) + 1e-9)
    factors = [max(1, math.ceil(n / edge)) for n in store.spatial]
    return [math.ceil(n / f) for n, f in zip(store.spatial, factors)], factors


class Snapshots:
    """Writes this rank's snapshot files for one run."""

    def __init__(self, store, shard, piece: int):
        self.store, self.shard, self.piece = store, shard, piece
        self.grid, self.factors = snapshot_grid(store)
        self._all: np.ndarray | None = None  # every point of the shard per cell: made once

    def _cells(self, rows: torch.Tensor) -> torch.Tensor:
        """The flat grid cell of each row."""
        g = torch.tensor(self.grid, dtype=torch.int64, device=rows.device)
        if self.factors[0] == 0:  # a table: coordinates in [-1, 1]
            pos = ((self.shard.coords(rows).double() + 1) * 0.5 * g).long().clamp(min=0).minimum(g - 1)
        else:
            pos = self.shard.positions(rows) // torch.tensor(self.factors, dtype=torch.int64, device=rows.device)
        strides = [math.prod(self.grid[d + 1:]) for d in range(len(self.grid))]
        return (pos * torch.tensor(strides, dtype=torch.int64, device=rows.device)).sum(dim=1)

    def _count(self, row_groups) -> np.ndarray:
        """Points per grid cell of the given groups of rows, in pieces. uint32, shaped like the grid."""
        total = None
        for rows in row_groups:
            for part in rows.split(self.piece):
                if total is None:
                    total = torch.zeros(math.prod(self.grid), dtype=torch.int64, device=part.device)
                cells = self._cells(part)
                total.index_add_(0, cells, torch.ones_like(cells))
        if total is None:
            return np.zeros(self.grid, dtype=np.uint32)
        return total.cpu().numpy().astype(np.uint32).reshape(self.grid)

    def write(self, folder: Path, rank: int, world_size: int, selected: torch.Tensor | None, count: int,
              strategy: str) -> None:
        """This rank's file in `folder` (selected: the shard rows of its part of the teaching set; None:
        every row). Every point of the shard is counted once per run (a streamed shard is swept once)."""
        if self._all is None:
            self._all = self._count(rows for _, rows in self.shard.sweep(self.piece))
        sel = self._all if selected is None else self._count([selected])
        folder.mkdir(parents=True, exist_ok=True)
        with replaced_when_done(folder / f"rank-{rank:05d}.npz", ".tmp.npz") as tmp:
            np.savez_compressed(tmp, selected=sel, points=self._all, factors=np.asarray(self.factors),
                                count=np.int64(count), world_size=np.int64(world_size),
                                strategy=np.asarray(strategy))


def read_snapshot(folder: Path) -> dict:
    """The ranks' files summed: selected and all points per cell, and what they describe. `complete` is
    False when fewer files than the run's ranks are there (a run stopped while writing them)."""
    files = sorted(folder.glob("rank-*.npz"))
    if not files:
        raise FileNotFoundError(f"no snapshot files in {folder}")
    out = None
    for f in files:
        with np.load(f) as z:
            if out is None:
                out = {k: z[k] for k in z.files}
                out["selected"] = out["selected"].astype(np.int64)
                out["points"] = out["points"].astype(np.int64)
            else:
                out["selected"] += z["selected"]
                out["points"] += z["points"]
    out["ranks"] = len(files)
    out["complete"] = len(files) == int(out["world_size"])
    return out
