"""Mini-batches that are the same for any number of ranks, made on the fly (docs/design.md, "Mini-batches").

An epoch's chunks are dealt into W windows: every chunk of the signal gets a hash of (seed, epoch, chunk
id), chunks sorted by it are cut into W runs of near-equal length, and window w is run w (W = 1: one
window of every chunk). Each window is cut into S batches, stratified: in epoch e the points of chunk c
are put in a keyed random order, a bijection of its offsets keyed by (seed, e, c), and cut into S groups
of near-equal size (group s of a chunk with n points holds n // S + (s < n % S) of them); batch s of a
window is group s of each of its chunks. Every point is visited once per epoch, as in the authors' Pluto
run with chunks as tiles, and a batch samples every chunk of its window.

Nothing here is stored per point: a batch's rows come straight from the bijection's inverse, for the
positions of its group, so memory and work per step follow the batch, not the signal (docs/design.md,
"Memory stays within one budget"). A window is the unit of streaming (signal/stream.py): a shard too large
for its budget holds one window's chunks (and the next one's, read ahead) at a time. Windows depend on the
config and the signal only, so the teaching set does not depend on how many ranks there are or on whether
a rank streams.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..census import host_side, to_device
from ..errors import ConfigError
from .select import _shr, hash64, mix64

BATCH_SALT = 0xBA7C4   # keeps the points' order apart from the other hashes
WINDOW_SALT = 0xC4A11  # keeps the chunks' order apart from the other hashes
SHUFFLE_ROUNDS = 10  # swap-or-not rounds of a chunk's keyed order (below)

MAX_EPOCHS_CHECKED = 4096  # epochs whose windows are summed to bound a rank's share of one
_M1, _M2 = 0x5851F42D4C957F2D, 0x14057B7EF767814F  # odd multipliers (PCG's and MMIX's)
_ROUND_SALT = 0x2545F4914F6CDD1D


def _round_keys(n: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per round and per element of n/key: the reflection's offset in [0, n) and the coin's key, each
    (SHUFFLE_ROUNDS, m), made in a few whole-array operations."""
    r = torch.arange(1, SHUFFLE_ROUNDS + 1, dtype=torch.int64, device=key.device).unsqueeze(1)
    h = mix64(key.unsqueeze(0) + r * _ROUND_SALT)
    return _shr(h, 1) % n.clamp(min=1).unsqueeze(0), mix64(h ^ _M2)


def _swap_or_not(x: torch.Tensor, n: torch.Tensor, offset: torch.Tensor, coin: torch.Tensor) -> torch.Tensor:
    """One round: x and its partner offset - x (mod n) swap places when a keyed coin of the pair (its
    larger member) says so. Every round is its own inverse on [0, n), for any n. x and offset are in
    [0, n) (positions of a chunk's order, and _round_keys' offsets)."""
    partner = offset - x
    partner += n & (partner >> 63)  # (offset - x) mod n, both in [0, n): n added where negative, no division
    c = torch.maximum(x, partner)   # in place from here: a selecting step runs 10 rounds over every candidate
    c ^= coin
    c *= _M1
    c ^= c >> 29
    c *= _M2
    return torch.where(c < 0, partner, x)


def _shuffle(x, n, key, local, rounds) -> torch.Tensor:
    offset, coin = _round_keys(n, key)
    n = n.clamp(min=1)
    if local is not None:
        n = n.index_select(0, local)
    for i in rounds:  # a round's keys per element, gathered as the round needs them (docs/design.md, "Gathers")
        o, k = (offset[i], coin[i]) if local is None else (offset[i].index_select(0, local),
                                                             coin[i].index_select(0, local))
        x = _swap_or_not(x, n, o, k)
    return x


def order_inverse(q: torch.Tensor, n: torch.Tensor, key: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
    """The offsets at positions q of a keyed random order of [0, n) (q: int64 positions; n, key: int64, one
    per element, or one per chunk with `local` giving each element's chunk).

    The order is a swap-or-not shuffle (Hoang, Morris and Rogaway, CRYPTO 2012): SHUFFLE_ROUNDS rounds, each
    reflecting x to offset - x (mod n) when a keyed coin of the pair says so. A bijection of [0, n) for any
    n with no cycle-walking, so the same fixed number of whole-array operations runs on any device and no
    value is read on the host; the inverse is the same rounds in reverse order."""
    return _shuffle(q, n, key, local, reversed(range(SHUFFLE_ROUNDS)))


def order_forward(x: torch.Tensor, n: torch.Tensor, key: torch.Tensor, local: torch.Tensor | None = None) -> torch.Tensor:
    """The position of each offset x in the keyed order of [0, n): the inverse of order_inverse (the tests
    check one against the other)."""
    return _shuffle(x, n, key, local, range(SHUFFLE_ROUNDS))


def _chunk_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The chunk ids 0..n-1 sorted by their hash of (seed, epoch): the deal of an epoch's windows (host
    work on host tensors: no device is involved)."""
    with host_side():
        return torch.argsort(hash64(torch.arange(n, dtype=torch.int64), seed, epoch, WINDOW_SALT)).numpy()


def group_bounds(n: np.ndarray, groups: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) positions of group s of `groups` in chunks of n points: n // G + (g < n % G) points each."""
    q, rem = n // groups, n % groups
    lo = s * q + np.minimum(s, rem)
    return lo, lo + q + (s < rem)


class BatchPlan:
    """This rank's part of every batch: `rows(step)` (shard rows on `device`), and what every rank knows
    without communication: `count(step)` (points in the batch on all ranks) and the windows."""

    def __init__(self, chunk_sizes: list[int], own_chunks: list[int], chunk_start: np.ndarray,
                 num_batches: int, seed: int, device: torch.device | str = "cpu", windows: int = 1, epochs: int = 1):
        """chunk_sizes: points in every chunk of the signal (all ranks); own_chunks/chunk_start: this
        rank's chunks and the rows where each begins in the shard; num_batches: batches per epoch (at least
        `windows`); windows: windows per epoch (1: every batch samples every chunk); epochs: how many the
        run trains (the bound on a rank's share of a window covers them)."""
        all_sizes = np.asarray(chunk_sizes, dtype=np.int64)
        if windows > len(all_sizes):
            raise ConfigError(f"{windows} windows per epoch (teacher.window_points) exceed the {len(all_sizes)} "
                              f"chunks of the signal; raise teacher.window_points or ingest with smaller chunks "
                              f"(signal.chunk)")
        self.windows = max(1, windows)
        self.per_window = max(1, math.ceil(num_batches / self.windows))  # S, batches of each window
        if self.per_window > all_sizes.max():
            raise ConfigError(f"teacher.num_batches={num_batches} (set, or the signal's points / "
                              f"teacher.batch_points) cuts every chunk into {self.per_window} groups, more than "
                              f"the points in a chunk ({all_sizes.max()}); use fewer batches (or larger "
                              f"teacher.batch_points), or ingest with larger chunks")
        self.num_batches = self.windows * self.per_window  # steps per epoch
        self.epochs = max(1, epochs)
        self._most: int | None = None
        self.seed = seed
        self.device = torch.device(device)
        self.own_chunks = list(own_chunks)
        self.chunk_start = np.asarray(chunk_start, dtype=np.int64)
        self._all_sizes = all_sizes
        self._own_sizes = np.diff(self.chunk_start)
        self._index_of = {c: i for i, c in enumerate(self.own_chunks)}
        self.row_dtype = torch.int32 if int(self.chunk_start[-1]) < (1 << 31) else torch.int64
        # Per own chunk, on the device once: sizes, first rows, ids, and each group's [lo, hi) (so a step
        # computes its rows with no copy from the host; a host read or a pageable copy would make the
        # host wait for a GPU).
        dev = self.device
        self._sizes = torch.from_numpy(self._own_sizes).to(dev)
        self._starts = torch.from_numpy(self.chunk_start[:-1].copy()).to(dev)
        self._ids = torch.tensor(self.own_chunks, dtype=torch.int64, device=dev)
        self._windows_epoch, self._window_ids = None, []
        self._window_key, self._window_sel = None, None
        self._rows_key, self._rows = None, None

    # ---- windows ------------------------------------------------------------------------------------
    def window_chunks(self, epoch: int) -> list[np.ndarray]:
        """Every window's chunk ids in `epoch` (all ranks' chunks), each ascending."""
        if epoch != self._windows_epoch:
            n = len(self._all_sizes)
            if self.windows == 1:
                self._window_ids = [np.arange(n)]
            else:
                order = _chunk_order(n, self.seed, epoch)
                cuts = [n * w // self.windows for w in range(self.windows + 1)]
                self._window_ids = [np.sort(order[cuts[w]:cuts[w + 1]]) for w in range(self.windows)]
            self._windows_epoch = epoch
        return self._window_ids

    @property
    def per_epoch(self) -> bool:
        """Whether a batch holds other chunks in another epoch (windows > 1): a cached teaching set from an
        earlier epoch then names points the batch no longer has (and a streamed shard no longer holds)."""
        return self.windows > 1

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, batch) of a step."""
        return divmod(step, self.num_batches)

    def window_of(self, step: int) -> tuple[int, int]:
        """(epoch, window) of a step: a window's batches are consecutive steps."""
        epoch, b = self.locate(step)
        return epoch, b // self.per_window

    def window_indices(self, epoch: int, w: int) -> list[int]:
        """Positions in `own_chunks` of this rank's chunks in window w of `epoch`, ascending."""
        if self.windows == 1:
            return list(range(len(self.own_chunks)))
        return sorted(self._index_of[c] for c in self.window_chunks(epoch)[w].tolist() if c in self._index_of)

    def chunk_indices(self, step: int) -> list[int]:
        """Positions in `own_chunks` of this rank's chunks in the window of `step`, ascending."""
        return self.window_indices(*self.window_of(step))

    def windows_from(self, step: int):
        """((epoch, window), chunk positions) of the window of `step` and every later one, in order."""
        epoch, w = self.window_of(step)
        while True:
            yield (epoch, w), self.window_indices(epoch, w)
            w += 1
            if w == self.windows:
                epoch, w = epoch + 1, 0

    def most_window_points(self) -> int:
        """The most points of this rank's chunks in one window over the run's epochs (`epochs`; a rank's
        share of a window varies from epoch to epoch, since windows are dealt anew; runs of more than
        MAX_EPOCHS_CHECKED epochs are checked on that many, evenly spaced)."""
        if self.windows == 1:
            return int(self._own_sizes.sum())
        if self._most is None:
            n = len(self._all_sizes)
            own = np.zeros(n, dtype=np.int64)
            own[self.own_chunks] = self._own_sizes
            cuts = np.array([n * w // self.windows for w in range(self.windows)])
            self._most = 0
            for epoch in np.unique(np.linspace(0, self.epochs - 1, min(self.epochs, MAX_EPOCHS_CHECKED)).astype(int)):
                order = _chunk_order(n, self.seed, int(epoch))
                self._most = max(self._most, int(np.add.reduceat(own[order], cuts).max()))
        return self._most

    def count(self, step: int) -> int:
        """Points in the batch used at `step`, summed over all chunks of the signal: no communication."""
        epoch, b = self.locate(step)
        ids = self.window_chunks(epoch)[b // self.per_window]
        lo, hi = group_bounds(self._all_sizes[ids], self.per_window, b % self.per_window)
        return int((hi - lo).sum())

    # ---- rows ---------------------------------------------------------------------------------------
    def _window(self, step: int) -> tuple[list[int], torch.Tensor | None]:
        """This rank's chunk positions in the window of `step` (host list, and on the device; None: all)."""
        key = self.window_of(step)
        if key != self._window_key:
            idx = self.chunk_indices(step)
            sel = None if self.windows == 1 else to_device(np.asarray(idx, dtype=np.int64), self.device)
            self._window_key, self._window_idx, self._window_sel = key, idx, sel
        return self._window_idx, self._window_sel

    def rows(self, step: int) -> torch.Tensor:
        """This rank's shard rows of the batch used at `step`, (n_b,) on the device, grouped by chunk."""
        key = self.locate(step)
        if self.windows == 1 and self.per_window == 1:
            key = (0, 0)  # one batch of every chunk in its own order: the same rows in every epoch
        if key == self._rows_key:
            return self._rows
        epoch, b = key
        idx, sel = self._window(step)
        pick = (lambda t: t) if sel is None else (lambda t: t.index_select(0, sel))
        sizes, starts = pick(self._sizes), pick(self._starts)
        s, groups = b % self.per_window, self.per_window
        # Group s of each chunk: positions [lo, lo + count) of its keyed order (the count is known on the
        # host from the chunk sizes, so no device value is read).
        lo_host, hi_host = group_bounds(self._own_sizes[idx], groups, s)
        total = int((hi_host - lo_host).sum())
        lo = s * (sizes // groups) + torch.clamp(sizes % groups, max=s)
        counts = sizes // groups + (s < sizes % groups).long()
        local = torch.repeat_interleave(torch.arange(len(idx), device=self.device), counts, output_size=total)
        q = torch.arange(total, device=self.device) - torch.repeat_interleave(
            torch.cumsum(counts, 0) - counts, counts, output_size=total) + lo.index_select(0, local)
        if groups == 1:  # whole chunks, in their own order
            offsets = q
        else:
            offsets = order_inverse(q, sizes, hash64(pick(self._ids), self.seed, epoch, BATCH_SALT), local)
        self._rows, self._rows_key = (starts.index_select(0, local) + offsets).to(self.row_dtype), key
        return self._rows


def make_plan(chunk_sizes: list[int], own_chunks: list[int], chunk_start: np.ndarray, num_batches: int, seed: int,
              device: torch.device | str = "cpu", windows: int = 1, steps: int = 0) -> BatchPlan:
    """The batch plan of a run of `steps` steps (0: one epoch)."""
    plan = BatchPlan(chunk_sizes, own_chunks, chunk_start, num_batches, seed, device, windows)
    plan.epochs = max(1, -(-steps // plan.num_batches))
    return plan
