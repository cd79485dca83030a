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
            raise ConfigError(f"teacher.num_batches={num_batches} exceeds the points in a chunk "
                              f"({max(chunk_sizes)}); lower it or ingest with larger chunks")
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

    def global_count(self, b: int) -> int:
        """Points in batch b summed over all chunks of the signal: no communication needed."""
        return int(self._global_counts[b])

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
