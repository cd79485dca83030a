"""A signal as a Zarr grid of points, and each rank's shard of its chunks.

Points have global identities: `gid` = row-major flat index over the spatial grid, which is the same
as (chunk id, offset in chunk) up to a fixed bijection. Everything the teacher does keys on gids, so
the teaching set never depends on the number of ranks (docs/design.md, "Global identities").
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from .errors import SignalError
from .ingest import ATTR


class SignalStore:
    """Read access to an ingested signal: its chunk grid, and chunks as normalized float32 points."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise SignalError(f"{self.path} is not a Zarr v3 store (no zarr.json); ingest the source first "
                              f"with: python -m dist_int ingest SRC {self.path}")
        try:
            self.array = zarr.open_array(self.path, mode="r")
            meta = dict(self.array.attrs).get(ATTR)
        except Exception as e:
            raise SignalError(f"cannot open Zarr store {self.path}: {e}. The store may be corrupt; "
                              f"ingest the source again") from None
        if not meta or "value_range" not in meta:
            raise SignalError(f"{self.path} was not written by 'dist_int ingest' (attribute '{ATTR}' "
                              f"missing); ingest the source file with: python -m dist_int ingest SRC DEST")
        if self.array.ndim < 2 or min(self.array.shape[:-1]) < 2 or self.array.shape[-1] < 1:
            raise SignalError(f"{self.path} has shape {self.array.shape}; expected (*spatial, channels) with "
                              f"at least 2 points per axis")
        if self.array.dtype.kind not in "biuf" or self.array.dtype.itemsize > 8 or \
                (self.array.dtype.kind in "iu" and self.array.dtype.itemsize > 4):
            raise SignalError(f"{self.path} holds {self.array.dtype} values; use 8-32 bit integers or floats")
        self.meta = meta
        self.shape = tuple(self.array.shape)            # (*spatial, C)
        self.spatial = self.shape[:-1]
        self.channels = self.shape[-1]
        self.chunk_shape = tuple(self.array.chunks[:-1])  # spatial chunk edges
        self.grid = tuple(math.ceil(n / c) for n, c in zip(self.spatial, self.chunk_shape))
        self.num_chunks = math.prod(self.grid)
        self.num_points = math.prod(self.spatial)
        lo, hi = meta["value_range"]
        self.offset, self.scale = float(lo), 1.0 / (float(hi) - float(lo))

    def chunk_slices(self, cid: int) -> tuple[slice, ...]:
        idx = np.unravel_index(cid, self.grid)
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, self.chunk_shape, self.spatial))

    def chunk_size(self, cid: int) -> int:
        return math.prod(s.stop - s.start for s in self.chunk_slices(cid))

    def chunk_gids(self, cid: int) -> np.ndarray:
        """Global ids of a chunk's points, in the chunk's row-major order (its offsets)."""
        axes = [np.arange(s.start, s.stop) for s in self.chunk_slices(cid)]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.ravel_multi_index([m.ravel() for m in mesh], self.spatial).astype(np.int64)

    def read_chunk(self, cid: int) -> np.ndarray:
        """Normalized values of one chunk, (n, C) float32 in chunk row-major order."""
        try:
            raw = self.array[self.chunk_slices(cid)]
        except Exception as e:
            raise SignalError(f"cannot read chunk {cid} of {self.path}: {e}. The store may be corrupt or "
                              f"truncated; ingest the source again") from None
        values = (raw.reshape(-1, self.channels).astype(np.float64) - self.offset) * self.scale
        if not np.isfinite(values).all():
            raise SignalError(f"chunk {cid} of {self.path} contains NaN or Inf values")
        return values.astype(np.float32)

    def coords(self, gids: np.ndarray) -> np.ndarray:
        """Coordinates in [-1, 1] per axis (SIREN and INT both use [-1, 1]; docs/method.md), (n, D) float32."""
        idx = np.unravel_index(gids, self.spatial)
        cols = [(2.0 * i / max(n - 1, 1) - 1.0) for i, n in zip(idx, self.spatial)]
        return np.stack(cols, axis=1).astype(np.float32)


def assign_chunks(num_chunks: int, world_size: int, seed: int) -> list[list[int]]:
    """Interleaved ownership: chunks in row-major order are cut into blocks of `world_size`, and each
    block is dealt to the ranks in a seeded order. Every rank gets one chunk of every block, so each
    rank holds every region of the signal and error mass stays balanced; counts differ by at most one.
    """
    if world_size > num_chunks:
        raise SignalError(f"{world_size} ranks but the signal has only {num_chunks} chunks; use fewer "
                          f"ranks or a smaller signal.chunk (re-ingest the source)")
    owners: list[list[int]] = [[] for _ in range(world_size)]
    rng = np.random.default_rng([seed, 0x5A4D])
    for start in range(0, num_chunks, world_size):
        block = range(start, min(start + world_size, num_chunks))
        ranks = rng.permutation(world_size)
        for cid, r in zip(block, ranks):
            owners[r].append(cid)
    return owners


@dataclass
class Shard:
    """One rank's chunks, held resident as tensors (rows grouped by chunk, in `chunk_ids` order).

    Readers call `load`; a streaming reader can later replace it with per-step `read_chunk` calls
    without the teacher noticing, since the teacher only sees (chunk id, offset) spans.
    """

    chunk_ids: list[int]
    chunk_start: np.ndarray     # (num_chunks + 1,) row where each chunk begins
    gids: torch.Tensor          # (n,) int64
    coords: torch.Tensor        # (n, D) float32
    values: torch.Tensor        # (n, C) float32

    @property
    def num_points(self) -> int:
        return int(self.gids.numel())

    def to(self, device) -> "Shard":
        return Shard(self.chunk_ids, self.chunk_start, self.gids.to(device),
                     self.coords.to(device), self.values.to(device))

    @staticmethod
    def load(store: SignalStore, chunk_ids: list[int]) -> "Shard":
        gids = [store.chunk_gids(c) for c in chunk_ids]
        values = [store.read_chunk(c) for c in chunk_ids]
        gid = np.concatenate(gids)
        start = np.fromiter(itertools.accumulate((len(g) for g in gids), initial=0), dtype=np.int64)
        return Shard(list(chunk_ids), start, torch.from_numpy(gid),
                     torch.from_numpy(store.coords(gid)), torch.from_numpy(np.concatenate(values)))
