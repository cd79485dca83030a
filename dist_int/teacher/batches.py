"""Stratified mini-batches that are the same for any number of ranks (docs/design.md, "Mini-batches").

In epoch e, the points of chunk c are ordered by a counter-based hash of (seed, e, c, offset) and cut into
`num_batches` groups of near-equal size (group b of a chunk with n points holds n // G + (b < n % G) of
them); batch b is group b of every chunk. Every point is visited once per epoch, as in the authors' Pluto
run with chunks as tiles. A rank builds its part of batch b from its own chunks only, on the device, once
per epoch: hashing and sorting there costs no host work and no copy per step.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError
from .select import hash64

BATCH_SALT = 0xBA7C4  # keeps the batch permutation's hash apart from the other hashes
BUILD_BLOCK = 1 << 18  # points hashed and sorted at once when an epoch's batches are built


def group_sizes(chunk_sizes: np.ndarray, num_batches: int) -> np.ndarray:
    """(num_batches,) points of each batch over the given chunks: group b of a chunk with n points holds
    n // G + (b < n % G) of them."""
    n = np.asarray(chunk_sizes, dtype=np.int64)[None, :]
    return (n // num_batches + (np.arange(num_batches)[:, None] < n % num_batches)).sum(1)


class BatchPlan:
    def __init__(self, chunk_sizes: list[int], own_chunks: list[int], chunk_start: np.ndarray,
                 num_batches: int, seed: int, device: torch.device | str = "cpu"):
        """chunk_sizes: points in every chunk of the signal (all ranks); own_chunks/chunk_start: this
        rank's chunks and the rows where each begins in the shard; row indices live on `device`."""
        if num_batches > max(chunk_sizes):
            raise ConfigError(f"teacher.num_batches={num_batches} (set, or the signal's points / "
                              f"teacher.batch_points) exceeds the points in a chunk ({max(chunk_sizes)}); use fewer "
                              f"batches (or larger teacher.batch_points), or ingest with larger chunks")
        self.num_batches = num_batches
        self.seed = seed
        self.device = torch.device(device)
        self.own_chunks = own_chunks
        self.chunk_start = chunk_start
        own_sizes = np.diff(np.asarray(chunk_start, dtype=np.int64))
        self._global_counts = group_sizes(chunk_sizes, num_batches)
        self._local_counts = group_sizes(own_sizes, num_batches)
        self._num_local = int(chunk_start[-1])
        self._own_sizes = own_sizes
        # Row indices as int32 where they fit: 4 bytes per point for a whole epoch's batches.
        self.row_dtype = torch.int32 if self._num_local < (1 << 31) else torch.int64
        # Copied to the device once: host-to-device copies from pageable memory synchronize.
        dev = self.device
        self._sizes = torch.from_numpy(own_sizes).to(dev)
        self._starts = torch.from_numpy(np.asarray(chunk_start[:-1], dtype=np.int64)).to(dev)
        self._chunk_ids = torch.tensor(list(own_chunks), dtype=torch.int64, device=dev)
        self._epoch = None
        self._batches: list[torch.Tensor] = []

    def count(self, step: int) -> int:
        """Points in the batch used at `step`, summed over all chunks of the signal: no communication."""
        return int(self._global_counts[self.locate(step)[1]])

    def chunk_indices(self, step: int) -> list[int]:
        """Positions in `own_chunks` of the chunks the batch at `step` draws from: all of them."""
        return list(range(len(self.own_chunks)))

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, batch) of a step."""
        return divmod(step, self.num_batches)

    def _build(self, epoch: int) -> list[torch.Tensor]:
        """The epoch's batches, all on the device with no host read (output sizes come from the host).
        Chunks are processed in blocks of about BUILD_BLOCK points, so the temporaries of hashing and
        sorting stay bounded; what remains is one row index per point."""
        out = [torch.empty(int(n), dtype=self.row_dtype, device=self.device) for n in self._local_counts]
        filled = [0] * self.num_batches
        i0 = 0
        while i0 < len(self.own_chunks):
            i1 = i0 + 1
            while i1 < len(self.own_chunks) and self.chunk_start[i1 + 1] - self.chunk_start[i0] <= BUILD_BLOCK:
                i1 += 1
            for b, rows in enumerate(self._build_block(epoch, i0, i1)):
                out[b][filled[b]:filled[b] + rows.numel()] = rows
                filled[b] += rows.numel()
            i0 = i1
        return out

    def _build_block(self, epoch: int, i0: int, i1: int) -> list[torch.Tensor]:
        """Batches' rows from the shard's chunks i0..i1-1."""
        dev, G = self.device, self.num_batches
        sizes, starts = self._sizes[i0:i1], self._starts[i0:i1]
        lo, hi = int(self.chunk_start[i0]), int(self.chunk_start[i1])
        local = torch.repeat_interleave(torch.arange(i1 - i0, device=dev), sizes, output_size=hi - lo)
        rows = torch.arange(lo, hi, device=dev)
        ident = (self._chunk_ids[i0:i1][local] << 32) | (rows - starts[local])  # (chunk id, offset)
        key = hash64(ident, self.seed, epoch, BATCH_SALT)
        del ident
        # Rows grouped by chunk (in shard order), ordered by key inside each chunk.
        order = torch.argsort(key)
        del key
        order = order[torch.argsort(local[order], stable=True)]
        chunk = local[order]
        rank = rows - lo - (starts[chunk] - lo)                   # position inside its chunk
        n = sizes[chunk]
        q, rem = n // G, n % G
        big = rem * (q + 1)  # the first `rem` groups hold q + 1 points, the others q
        group = torch.where(rank < big, rank // (q + 1), rem + (rank - big) // q.clamp(min=1))
        by_group = order[torch.argsort(group, stable=True)] + lo
        return list(torch.split(by_group, group_sizes(self._own_sizes[i0:i1], G).tolist()))

    def rows(self, step: int) -> torch.Tensor:
        """This rank's shard rows of the batch used at `step`, (n_b,) int64 on the device."""
        epoch, b = self.locate(step)
        if self.num_batches == 1:
            if not self._batches:
                self._batches = [torch.arange(self._num_local, dtype=self.row_dtype, device=self.device)]
            return self._batches[0]
        if epoch != self._epoch:
            self._batches = self._build(epoch)
            self._epoch = epoch
        return self._batches[b]


CHUNK_SALT = 0xC4A11  # keeps the chunk-to-batch hash apart from the other hashes


class ChunkBatchPlan(BatchPlan):
    """Mini-batches made of whole chunks (teacher.batches = "chunks"), so a batch can be read from disk
    on its own: a shard too large for memory is streamed batch by batch (signal/stream.py).

    In epoch e every chunk of the signal gets the hash of (seed, e, chunk id); chunks sorted by it are cut
    into `num_batches` runs of near-equal length, and batch b is run b. The grouping depends only on the
    chunk ids, so it is the same for any number of ranks; every point is visited once per epoch
    (docs/design.md, "Mini-batches"). A rank's part of batch b is the chunks of run b it owns.
    """

    def __init__(self, chunk_sizes: list[int], own_chunks: list[int], chunk_start: np.ndarray,
                 num_batches: int, seed: int, device: torch.device | str = "cpu"):
        if num_batches > len(chunk_sizes):
            raise ConfigError(f"teacher.num_batches={num_batches} (set, or the signal's points / "
                              f"teacher.batch_points) exceeds the {len(chunk_sizes)} chunks of the signal, and "
                              f"teacher.batches = \"chunks\" puts whole chunks in a batch; use fewer batches or "
                              f"ingest with smaller chunks (signal.chunk)")
        super().__init__([max(chunk_sizes)], own_chunks, chunk_start, 1, seed, device)
        self.num_batches = num_batches
        self._all_sizes = np.asarray(chunk_sizes, dtype=np.int64)
        self._index_of = {c: i for i, c in enumerate(own_chunks)}
        self._groups_epoch, self._groups = None, []
        self._rows_key, self._rows = None, None

    def groups(self, epoch: int) -> list[np.ndarray]:
        """Every batch's chunk ids in `epoch` (all ranks' chunks), each ascending."""
        if epoch != self._groups_epoch:
            ids = torch.arange(len(self._all_sizes), dtype=torch.int64)
            order = torch.argsort(hash64(ids, self.seed, epoch, CHUNK_SALT)).numpy()
            cuts = [len(order) * b // self.num_batches for b in range(self.num_batches + 1)]
            self._groups = [np.sort(order[cuts[b]:cuts[b + 1]]) for b in range(self.num_batches)]
            self._groups_epoch = epoch
        return self._groups

    def count(self, step: int) -> int:
        epoch, b = self.locate(step)
        return int(self._all_sizes[self.groups(epoch)[b]].sum())

    def chunk_indices(self, step: int) -> list[int]:
        """Positions in `own_chunks` of this rank's chunks of the batch at `step`, ascending."""
        epoch, b = self.locate(step)
        return sorted(self._index_of[c] for c in self.groups(epoch)[b].tolist() if c in self._index_of)

    def rows(self, step: int) -> torch.Tensor:
        key = self.locate(step)
        if key != self._rows_key:
            idx = self.chunk_indices(step)
            starts = self.chunk_start
            n = sum(int(starts[i + 1] - starts[i]) for i in idx)
            sel = torch.tensor(idx, dtype=torch.int64, device=self.device)
            sizes, first = self._sizes[sel], self._starts[sel]
            local = torch.repeat_interleave(torch.arange(len(idx), device=self.device), sizes, output_size=n)
            offset = torch.arange(n, device=self.device) - torch.repeat_interleave(
                torch.cumsum(sizes, 0) - sizes, sizes, output_size=n)
            self._rows = (first[local] + offset).to(self.row_dtype)
            self._rows_key = key
        return self._rows


def make_plan(layout: str, chunk_sizes: list[int], own_chunks: list[int], chunk_start: np.ndarray,
              num_batches: int, seed: int, device: torch.device | str = "cpu") -> BatchPlan:
    """The batch plan of teacher.batches: "stratified" (every batch samples every chunk) or "chunks"."""
    cls = ChunkBatchPlan if layout == "chunks" and num_batches > 1 else BatchPlan
    return cls(chunk_sizes, own_chunks, chunk_start, num_batches, seed, device)
