"""Shards larger than their budget: chunks read from the Zarr store by a background prefetcher, a window
at a time (docs/design.md, "Streaming shards").

A StreamedShard answers the same questions as a resident Shard (positions, coordinates and global ids
come from the chunk geometry either way); only the raw values live in memory, for the chunks of the
current window (teacher.window_points: each epoch deals the chunks into windows, and a window's batches
are consecutive steps). The windows to come are known in advance and read while the current one trains.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterator

import numpy as np
import torch

from ..census import to_device
from ..errors import ConfigError
from ..hostmem import trim
from .errors import SignalError
from .store import Shard, SignalStore, held_dtype, read_chunks
from .targets import TargetRange

READ_AHEAD = 2  # lists read ahead of the consumer: enough to overlap, and no reading far past a short run
TRAIN_SHARE = 0.75  # of the signal's budget: the window being trained and the next; the rest: sweeps
def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


_UNLOADED = 1 << 62  # window offset of a chunk that is not loaded: indexing it fails loudly


class Prefetcher:
    """Reads lists of chunks in a background thread, in order, at most READ_AHEAD lists ahead and holding
    at most `budget` bytes (the list handed out last included; one list larger than the budget is still
    read, alone)."""

    _END = object()

    def __init__(self, read: Callable[[list[int]], torch.Tensor], nbytes: Callable[[list[int]], int], budget: int):
        self._read, self._nbytes, self.budget = read, nbytes, budget
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._queue: deque = deque()
        self._held = 0      # bytes queued or handed out and not yet released
        self._out = 0       # bytes of the list handed out last
        self._error: BaseException | None = None

    def start(self, loads: Iterator[tuple[object, list[int]]]) -> None:
        """Drop whatever was read ahead and read `loads` ((key, chunk positions) pairs) from now on."""
        self.close()
        self._stop, self._queue, self._held, self._out, self._error = False, deque(), 0, 0, None
        self._thread = threading.Thread(target=self._work, args=(loads,), daemon=True, name="dist_int-prefetch")
        self._thread.start()

    def _work(self, loads) -> None:
        try:
            for key, idx in loads:
                n = self._nbytes(idx)
                with self._cv:
                    self._cv.wait_for(lambda: self._stop or self._held == 0 or (
                        self._held + n <= self.budget and len(self._queue) < READ_AHEAD))
                    if self._stop:
                        return
                    self._held += n  # reserved before reading: the budget bounds what is in memory
                arr = self._read(idx)
                with self._cv:
                    self._queue.append((key, arr, n))
                    self._cv.notify_all()
            item = self._END
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            item = e
        with self._cv:
            if isinstance(item, BaseException):
                self._error = item
            else:
                self._queue.append(item)
            self._cv.notify_all()

    def next(self) -> tuple[object, torch.Tensor] | None:
        """The next (key, values) read; releases the previous one. None when the loads are exhausted."""
        with self._cv:
            self._held -= self._out
            self._out = 0
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._queue or self._error is not None)
            if self._error is not None and not self._queue:
                raise self._error
            item = self._queue.popleft()
            if item is self._END:
                return None
            key, arr, self._out = item
            return key, arr

    def close(self) -> None:
        if self._thread is not None:
            with self._cv:
                self._stop = True
                self._cv.notify_all()
            self._thread.join()
            self._thread = None


class StreamedShard(Shard):
    """A shard whose values are read from the store when a batch or a sweep needs them."""

    streamed = True

    def __init__(self, store: SignalStore, chunk_ids: list[int], device="cpu",
                 target_range: TargetRange = TargetRange(0.0, 1.0), cache_bytes: int = 1 << 30):
        dtype = held_dtype(store)
        super().__init__(store, chunk_ids, read_chunks(store, [], device), device,
                         target_range)
        self.store = store
        self.cache_bytes = cache_bytes
        self._point_bytes = store.channels * dtype.itemsize
        read = lambda idx: read_chunks(store, [self.chunk_ids[i] for i in idx], self.device)  # noqa: E731
        self._train = Prefetcher(read, self._bytes, int(cache_bytes * TRAIN_SHARE))
        self._sweeps = Prefetcher(read, self._bytes, int(cache_bytes * (1 - TRAIN_SHARE)))
        self._staged: tuple | None = None    # (epoch, window) the training window holds
        self._expected: tuple | None = None  # the (epoch, window) the training prefetcher reads next
        self._window = self._win_start = None
        self._set_window([], self.raw)

    def _bytes(self, idx: list[int]) -> int:
        return sum(int(self.chunk_start[i + 1] - self.chunk_start[i]) for i in idx) * self._point_bytes

    def check_plan(self, plan, limit: tuple[str, int] | None = None) -> None:
        """Refuse a batch plan that cannot stream: two windows (the one training and the next, read
        meanwhile) must fit the training share of the signal's budget. limit: what keeps the windows fewer
        than teacher.window_points asks (Config.window_limit), so that the advice names what can change."""
        total = self._bytes(range(len(self.chunk_ids)))
        if limit is None:
            smaller = f"lower teacher.window_points (windows of that many points are read one at a time; e.g. " \
                      f"{self._suggest(plan)})"
        elif limit[0] == "batches":
            smaller = (f"make more mini-batches, since a window holds at least one and there are {limit[1]:,} per "
                       f"epoch: lower teacher.batch_points (or raise teacher.num_batches), then teacher.window_points")
        else:
            smaller = (f"cut the signal into more chunks, since a window holds at least one and it has "
                       f"{limit[1]:,}: ingest it again with a smaller signal.chunk, into a new run.dir")
        if plan.windows == 1:
            raise ConfigError(
                f"this rank's shard ({_size(total)}) does not fit the signal's share of train.memory_mb "
                f"({_size(self.cache_bytes)}), and the whole signal is one window: {smaller}; or raise "
                f"train.memory_mb, or use more ranks")
        most = plan.most_window_points() * self._point_bytes
        if 2 * most > self.cache_bytes * TRAIN_SHARE:
            need = 2 * most / TRAIN_SHARE / 2**20
            raise ConfigError(
                f"a window holds up to {_size(most)} of this rank's shard, and two must fit in {TRAIN_SHARE:.0%} "
                f"of the signal's share of train.memory_mb ({_size(self.cache_bytes)}): {smaller}; or raise "
                f"train.memory_mb so that the signal's share is at least {need:.4g} MiB, or use more ranks")

    def _suggest(self, plan) -> int:
        """A teacher.window_points whose share on this rank fits twice in the training share (scaled from
        the windows at hand, with room for their variation from epoch to epoch)."""
        fits = self.cache_bytes * TRAIN_SHARE / 2 / self._point_bytes
        window = self.store.num_points / plan.windows
        return max(1, int(window * fits / max(plan.most_window_points(), 1) * 0.8))

    def _set_window(self, idx: list[int], values: torch.Tensor) -> None:
        """Make the chunks at positions `idx` (in this order, back to back in `values`) readable."""
        start = np.full(len(self.chunk_ids), _UNLOADED, dtype=np.int64)
        sizes = np.diff(self.chunk_start)[idx] if idx else np.zeros(0, np.int64)
        start[idx] = np.concatenate([[0], np.cumsum(sizes)[:-1]]) - self.chunk_start[idx] if idx else []
        # Both from host buffers (pinned on a GPU): queued copies, the host does not wait (census.py).
        self._window = values.to(self.device, non_blocking=True)
        self._win_start = to_device(start, self.device)

    def raw_rows(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is None:
            raise SignalError("a streamed shard cannot give every row at once; read it with sweep()")
        rows = rows.long()
        chunk = torch.searchsorted(self._starts[1:], rows, right=True)
        # index_select, not indexing: docs/design.md, "Gathers"
        return self._window.index_select(0, self._win_start.index_select(0, chunk) + rows)

    def fetch_targets(self, rows: torch.Tensor) -> torch.Tensor:
        """targets(rows) for rows anywhere in the shard (sorted): each of their chunks is read from the store
        in turn, one at a time, and only their values are kept. For a few scattered points (the probe set),
        not for sweeps: a chunk is read whole for each visit."""
        rows_np = rows.cpu().numpy()
        pos = np.searchsorted(self.chunk_start[1:], rows_np, side="right")
        dtype = held_dtype(self.store)
        raw = np.empty((len(rows_np), self.channels), dtype=dtype)
        for p in np.unique(pos):
            take = pos == p
            values = self.store.read_raw_chunk(self.chunk_ids[p]).view(dtype)
            raw[take] = values[rows_np[take] - self.chunk_start[p]]
        return self.target_range.encode(self._unit(torch.from_numpy(raw).to(self.device)))

    def stage(self, plan, step: int) -> None:
        """Load the chunks of the window of `step`: read ahead already when windows come in order; after a
        jump (resume, rollback) the prefetcher restarts there."""
        key = plan.window_of(step)
        if key == self._staged:
            return
        if key != self._expected:
            self._train.start(plan.windows_from(step))
        got, values = self._train.next()
        assert got == key, (got, key)
        self._set_window(plan.chunk_indices(step), values)
        epoch, w = key
        self._staged, self._expected = key, (epoch, w + 1) if w + 1 < plan.windows else (epoch + 1, 0)

    def sweep(self, max_points: int):
        limit = max(1, self._sweeps.budget // 2 // self._point_bytes)  # two groups in flight at a time
        groups = self._sweep_groups(min(max_points, limit))
        window, win_start, staged = self._window, self._win_start, self._staged
        self._sweeps.start(((g[0], g) for g in groups))
        try:
            for idx in groups:
                trim()  # the last group's temporaries: keep RSS to what is held (hostmem.py)
                _, values = self._sweeps.next()
                self._set_window(idx, values)
                yield idx, torch.arange(int(self.chunk_start[idx[0]]), int(self.chunk_start[idx[-1] + 1]),
                                        device=self.device)
        finally:
            self._sweeps.close()
            self._window, self._win_start, self._staged = window, win_start, staged

    def close(self) -> None:
        self._train.close()
        self._sweeps.close()


def open_shard(store: SignalStore, chunk_ids: list[int], device, target_range: TargetRange,
               budget_bytes: int) -> Shard:
    """This rank's shard: resident when its raw values fit `budget_bytes` (the signal's share of
    train.memory_mb), streamed a window at a time otherwise (engine/budget.py)."""
    sizes = sum(store.chunk_size(c) for c in chunk_ids)
    nbytes = sizes * store.channels * held_dtype(store).itemsize
    if nbytes <= budget_bytes or store.table:  # point tables are small: always resident
        return Shard.load(store, chunk_ids, device, target_range)
    return StreamedShard(store, chunk_ids, device, target_range, int(budget_bytes))
