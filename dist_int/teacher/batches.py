"""Stratified mini-batches that are the same for any number of ranks (docs/design.md, "Mini-batches").

In epoch e, chunk c's offsets are permuted by a generator seeded with (seed, e, c) and cut into
`num_batches` groups; batch b is group b of every chunk. Every point is visited once per epoch, as in the
authors' Pluto run with chunks as tiles. A rank builds its part of batch b from its own chunks only.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ConfigError


class BatchPlan:
    def __init__(self, chunk_sizes: list[int], own_chunks: list[int], chunk_start: np.ndarray,
                 num_batches: int, seed: int, device: torch.device | str = "cpu"):
        """chunk_sizes: points in every chunk of the signal (all ranks); own_chunks/chunk_start: this
        rank's chunks and the rows where each begins in the shard. Row indices live on `device`: an
        epoch's batches are built and copied there once, not at every step."""
        if num_batches > max(chunk_sizes):
            raise ConfigError(f"teacher.num_batches={num_batches} exceeds the points in a chunk "
                             f"({max(chunk_sizes)}); lower it or ingest with larger chunks")
        self.num_batches = num_batches
        self.seed = seed
        self.device = torch.device(device)
        self.own_chunks = own_chunks
        self.chunk_start = chunk_start
        sizes = np.asarray(chunk_sizes, dtype=np.int64)
        # np.array_split gives group b of a chunk with n points n // G + (b < n % G) points.
        b = np.arange(num_batches)[:, None]
        self._global_counts = (sizes[None, :] // num_batches + (b < sizes[None, :] % num_batches)).sum(1)
        self._epoch = None
        self._batches: list[torch.Tensor] = []
        self._num_local = int(chunk_start[-1])

    def global_count(self, b: int) -> int:
        """Points in batch b summed over all chunks of the signal: no communication needed."""
        return int(self._global_counts[b])

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, batch) of a step."""
        return divmod(step, self.num_batches)

    def rows(self, step: int) -> torch.Tensor:
        """This rank's shard rows of the batch used at `step`, (n_b,) int64."""
        epoch, b = self.locate(step)
        if self.num_batches == 1:
            if not self._batches:
                self._batches = [torch.arange(self._num_local, device=self.device)]
            return self._batches[0]
        if epoch != self._epoch:
            groups: list[list[np.ndarray]] = [[] for _ in range(self.num_batches)]
            for i, c in enumerate(self.own_chunks):
                start, stop = int(self.chunk_start[i]), int(self.chunk_start[i + 1])
                perm = np.random.default_rng([self.seed, epoch, c]).permutation(stop - start) + start
                for g, part in zip(groups, np.array_split(perm, self.num_batches)):
                    g.append(part)
            self._batches = [torch.from_numpy(np.concatenate(g)).to(self.device) for g in groups]
            self._epoch = epoch
        return self._batches[b]
