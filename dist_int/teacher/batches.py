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

from ..errors import ConfigError
from .select import hash64, mix64

BATCH_SALT = 0xBA7C4   # keeps the points' order apart from the other hashes
WINDOW_SALT = 0xC4A11  # keeps the chunks' order apart from the other hashes
WALKS = 64  # cycle-walking steps for chunks whose size is not a power of two: each leaves a point
            # outside with probability below 1/2, so all are in after 64 with certainty in practice

MAX_EPOCHS_CHECKED = 4096  # epochs whose windows are summed to bound a rank's share of one
_M1, _M2 = 0x5851F42D4C957F2D, 0x14057B7EF767814F  # odd multipliers (PCG's and MMIX's)
_MASK64 = (1 << 64) - 1


def _signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >> 63 else v


def _inverse(m: int) -> int:
    """The multiplicative inverse of an odd m modulo 2^64 (Newton's iteration), as an int64."""
    inv = m
    for _ in range(6):
        inv = inv * (2 - m * inv) & _MASK64
    return _signed(inv)


_I1, _I2 = _inverse(_M1), _inverse(_M2)


def _unshift(y: torch.Tensor, r: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The inverse of x -> x ^ (x >> r) on k-bit integers: the xor of y >> (j r) for j r < k."""
    x, shift = y, r
    for _ in range(3):  # r = ceil(k / 2) or more, so j <= 2 terms reach every bit
        x = x ^ torch.where(shift < k, y >> shift.clamp(max=63), torch.zeros_like(y))
        shift = shift + r
    return x


def _params(n: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per element: bits k (they hold n - 1; 0 for n = 1), mask 2^k - 1, shift ceil(k / 2), two keys."""
    k = torch.ceil(torch.log2(n.clamp(min=1).double())).long()
    return k, (torch.ones_like(k) << k) - 1, (k + 1) // 2, mix64(key), mix64(key ^ 0x2545F4914F6CDD1D)


def _back(x: torch.Tensor, k, mask, r, a, b) -> torch.Tensor:
    """One inverse step of the k-bit bijection (see order_forward's `ahead`)."""
    x = _unshift(x, r, k)
    x = (x * _I2) & mask
    x = (x - b) & mask
    x = _unshift(x, r, k)
    x = (x * _I1) & mask
    x = _unshift(x, r, k)
    return (x - a) & mask


def order_inverse(q: torch.Tensor, n: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The offsets at positions q of a keyed random order of [0, n) (q, n, key: int64, one per element).

    The order is a bijection of k-bit integers (k bits hold n - 1), made of invertible steps (add a key,
    xorshift, multiply by an odd constant, all mod 2^k), cycle-walked into [0, n): a value that lands at n
    or beyond is mapped again until it is inside. This is its inverse. On a GPU the walk is WALKS masked
    steps, so no value is read on the host; on a CPU, where reading is free, only the values still
    outside are walked."""
    params = _params(n, key)
    x = _back(q, *params)
    if q.device.type != "cpu":
        walk = (n & (n - 1)) != 0  # sizes that are powers of two fill their k bits: nothing to walk
        for _ in range(WALKS):
            x = torch.where(walk & (x >= n), _back(x, *params), x)
        return x
    out = (x >= n).nonzero().squeeze(1)
    while out.numel():
        x[out] = _back(x[out], *(p[out] for p in params))
        out = out[x[out] >= n[out]]
    return x


def order_forward(x: torch.Tensor, n: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The position of each offset x in the keyed order of [0, n): the inverse of order_inverse (the tests
    check one against the other)."""
    k, mask, r, a, b = _params(n, key)

    def ahead(x):
        x = (x + a) & mask
        x = x ^ (x >> r)
        x = (x * _M1) & mask
        x = x ^ (x >> r)
        x = (x + b) & mask
        x = (x * _M2) & mask
        return x ^ (x >> r)

    x = ahead(x)
    for _ in range(WALKS):
        x = torch.where(x >= n, ahead(x), x)
    return x


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
                ids = torch.arange(n, dtype=torch.int64)
                order = torch.argsort(hash64(ids, self.seed, epoch, WINDOW_SALT)).numpy()
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
            ids = torch.arange(n, dtype=torch.int64)
            self._most = 0
            for epoch in np.unique(np.linspace(0, self.epochs - 1, min(self.epochs, MAX_EPOCHS_CHECKED)).astype(int)):
                order = torch.argsort(hash64(ids, self.seed, int(epoch), WINDOW_SALT)).numpy()
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
            sel = None if self.windows == 1 else torch.tensor(idx, dtype=torch.int64, device=self.device)
            self._window_key, self._window_idx, self._window_sel = key, idx, sel
        return self._window_idx, self._window_sel

    def rows(self, step: int) -> torch.Tensor:
        """This rank's shard rows of the batch used at `step`, (n_b,) on the device, grouped by chunk."""
        key = self.locate(step)
        if key == self._rows_key:
            return self._rows
        epoch, b = key
        idx, sel = self._window(step)
        pick = (lambda t: t) if sel is None else (lambda t: t[sel])
        sizes, starts = pick(self._sizes), pick(self._starts)
        s, groups = b % self.per_window, self.per_window
        # Group s of each chunk: positions [lo, lo + count) of its keyed order (the count is known on the
        # host from the chunk sizes, so no device value is read).
        lo_host, hi_host = group_bounds(self._own_sizes[idx], groups, s)
        total = int((hi_host - lo_host).sum())
        lo = s * (sizes // groups) + torch.clamp(sizes % groups, max=s)
        counts = sizes // groups + (s < sizes % groups).long()
        local = torch.repeat_interleave(torch.arange(len(idx), device=self.device), counts, output_size=total)
        q = torch.arange(total, device=self.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts,
                                                                              output_size=total) + lo[local]
        if groups == 1:  # whole chunks, in their own order
            offsets = q
        else:
            keys = hash64(pick(self._ids), self.seed, epoch, BATCH_SALT)[local]
            offsets = order_inverse(q, sizes[local], keys)
        self._rows, self._rows_key = (starts[local] + offsets).to(self.row_dtype), key
        return self._rows


def make_plan(chunk_sizes: list[int], own_chunks: list[int], chunk_start: np.ndarray, num_batches: int, seed: int,
              device: torch.device | str = "cpu", windows: int = 1, steps: int = 0) -> BatchPlan:
    """The batch plan of a run of `steps` steps (0: one epoch)."""
    plan = BatchPlan(chunk_sizes, own_chunks, chunk_start, num_batches, seed, device, windows)
    plan.epochs = max(1, -(-steps // plan.num_batches))
    return plan
