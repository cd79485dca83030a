"""Teaching-set snapshots: where the teacher's points lie at chosen steps (`train.snapshot_every`).

The INT paper shows the selected pixels as a picture (its Fig. 1 and Fig. 5); a gigapixel teaching set
cannot be saved point by point, so a snapshot is a histogram on a bounded grid: every rank counts its
selected points and its candidates per cell and writes its own file. Counts add up, so the sum over the
rank files is the same for any number of ranks (docs/design.md, "Teaching-set snapshots"), and
`python -m dist_int report` draws the fraction selected per cell.

The grid has at most SNAPSHOT_CELLS cells: each axis of a grid signal is binned by a whole factor, so a
256^2 image keeps every pixel and a 65536^2 one sums 32x32 blocks; a point table (a shape's samples) is
binned by its coordinates over [-1, 1]^D.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

SNAPSHOT_CELLS = 1 << 22


def snapshot_grid(store) -> tuple[list[int], list[int]]:
    """(cells per axis, points per cell along each axis: 0 for a table's coordinate axes)."""
    if store.table:
        edge = int(round(SNAPSHOT_CELLS ** (1 / store.in_dims)))
        return [edge] * store.in_dims, [0] * store.in_dims
    edge = int(SNAPSHOT_CELLS ** (1 / len(store.spatial)) + 1e-9)
    factors = [max(1, math.ceil(n / edge)) for n in store.spatial]
    return [math.ceil(n / f) for n, f in zip(store.spatial, factors)], factors


def _cells(shard, rows: torch.Tensor, grid: list[int], factors: list[int]) -> torch.Tensor:
    """The flat grid cell of each row."""
    g = torch.tensor(grid, dtype=torch.int64, device=rows.device)
    if factors[0] == 0:  # a table: coordinates in [-1, 1]
        pos = ((shard.coords(rows).double() + 1) * 0.5 * g).long().clamp(min=0).minimum(g - 1)
    else:
        pos = shard.positions(rows) // torch.tensor(factors, dtype=torch.int64, device=rows.device)
    strides = [math.prod(grid[d + 1:]) for d in range(len(grid))]
    return (pos * torch.tensor(strides, dtype=torch.int64, device=rows.device)).sum(dim=1)


def count_cells(shard, rows: torch.Tensor, grid: list[int], factors: list[int], piece: int) -> np.ndarray:
    """Points of `rows` per grid cell, counted in pieces of `piece` rows. uint32, shaped like the grid."""
    total = torch.zeros(math.prod(grid), dtype=torch.int64, device=rows.device)
    for part in rows.split(piece):
        total += torch.bincount(_cells(shard, part, grid, factors), minlength=total.numel())
    return total.to(torch.int32).cpu().numpy().astype(np.uint32).reshape(grid)


def write_snapshot(folder: Path, rank: int, shard, store, selected: torch.Tensor | None,
                   candidates: torch.Tensor | None, count: int, strategy: str, piece: int) -> None:
    """This rank's file of the snapshot in `folder` (selected/candidates: shard rows; None: all rows)."""
    grid, factors = snapshot_grid(store)
    every = torch.arange(shard.num_points, device=shard.device)
    cand = count_cells(shard, every if candidates is None else candidates, grid, factors, piece)
    sel = cand if selected is None else count_cells(shard, selected, grid, factors, piece)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank-{rank:05d}.npz"
    tmp = folder / f".rank-{rank:05d}.tmp.npz"
    np.savez_compressed(tmp, selected=sel, candidates=cand, factors=np.asarray(factors),
                        shape=np.asarray(store.spatial if not store.table else grid), count=np.int64(count),
                        strategy=np.asarray(strategy))
    os.replace(tmp, path)


def read_snapshot(folder: Path) -> dict:
    """The ranks' files summed: selected and candidates per cell, and what they describe."""
    files = sorted(folder.glob("rank-*.npz"))
    if not files:
        raise FileNotFoundError(f"no snapshot files in {folder}")
    out = None
    for f in files:
        with np.load(f) as z:
            if out is None:
                out = {k: z[k] for k in z.files}
                out["selected"] = out["selected"].astype(np.int64)
                out["candidates"] = out["candidates"].astype(np.int64)
            else:
                out["selected"] += z["selected"]
                out["candidates"] += z["candidates"]
    out["ranks"] = len(files)
    return out
