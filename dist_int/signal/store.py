"""A signal as a Zarr grid of points, and each rank's shard of its chunks.

Points have global identities: `gid` = row-major flat index over the spatial grid, which is the same
as (chunk id, offset in chunk) up to a fixed bijection. Everything the teacher does keys on gids, so
the teaching set never depends on the number of ranks (docs/design.md, "Global identities").
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
import zarr

from ..census import host_buffer
from ..hostmem import trim
from .errors import SignalError
from .source import ATTR
from .targets import TargetRange


def signal_geometry(shape, table: bool) -> tuple[int, int, tuple[int, ...] | None]:
    """(coordinate axes, output channels, samples per axis) of a signal of `shape` (*spatial, C): what a
    field maps. A grid maps its positions to every channel; a point table (table: its kind's
    Modality.table, e.g. a shape's signed-distance samples) maps its stored coordinate columns to the last
    column and has no axes of samples (None)."""
    if table:
        return int(shape[-1]) - 1, 1, None
    return len(shape) - 1, int(shape[-1]), tuple(int(n) for n in shape[:-1])


class SignalStore:
    """Read access to an ingested signal: its chunk grid, and chunks as normalized float32 points."""

    def __init__(self, path: str | Path, value_range: str | list[float] = "data"):
        """value_range: signal.value_range, the values that map to [0, 1] (docs/design.md, "Values are
        the data's")."""
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
        self.kind = meta.get("kind", "image")
        # A point table (written by ingest from its kind's Modality.table; stores of shapes written before
        # the attribute existed are tables too).
        self.table = bool(self.meta.get("table", self.kind == "shape"))
        self.geometry = signal_geometry(self.shape, self.table)  # what the field maps (model/field.py)
        self.in_dims, self.out_channels, _ = self.geometry
        self.chunk_shape = tuple(self.array.chunks[:-1])  # spatial chunk edges
        self.grid = tuple(math.ceil(n / c) for n, c in zip(self.spatial, self.chunk_shape))
        self.num_chunks = math.prod(self.grid)
        self.num_points = math.prod(self.spatial)
        self.value_range = self._range(value_range)
        lo, hi = self.value_range
        self.offset, self.scale = lo, 1.0 / (hi - lo)

    def _range(self, asked: str | list[float]) -> tuple[float, float]:
        """The range reads normalize by: the one chosen at ingest (the data's), the dtype's, or the
        config's own, which must cover the data (stores from before data ranges were recorded cover it)."""
        meta = self.meta
        if asked == "data":
            return float(meta["value_range"][0]), float(meta["value_range"][1])
        if asked == "dtype":
            full = meta.get("dtype_range")
            if full is None and np.dtype(self.array.dtype).kind in "biu":  # a store from an older dist_int
                info = np.iinfo(self.array.dtype) if self.array.dtype != np.bool_ else None
                full = [0.0, 1.0] if info is None else [float(info.min), float(info.max)]
            if full is None:
                raise SignalError(f"signal.value_range = \"dtype\" but {self.path} holds {self.array.dtype} values, "
                                  f"which have no full range to speak of; use \"data\" or [lo, hi]")
            return float(full[0]), float(full[1])
        lo, hi = float(asked[0]), float(asked[1])
        data = meta.get("data_range")
        if data is not None and (data[0] < lo or data[1] > hi):
            raise SignalError(f"signal.value_range = [{lo:g}, {hi:g}] does not cover the data of {self.path}, "
                              f"which spans [{data[0]:g}, {data[1]:g}]; widen it, or use \"data\"")
        return lo, hi

    def chunk_slices(self, cid: int) -> tuple[slice, ...]:
        idx = np.unravel_index(cid, self.grid)
        return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, self.chunk_shape, self.spatial))

    def chunk_size(self, cid: int) -> int:
        return math.prod(s.stop - s.start for s in self.chunk_slices(cid))

    def read_raw_chunk(self, cid: int) -> np.ndarray:
        """One chunk's values as stored (the source dtype), (n, C) in chunk row-major order."""
        try:
            raw = self.array[self.chunk_slices(cid)]
        except Exception as e:
            raise SignalError(f"cannot read chunk {cid} of {self.path}: {e}. The store may be corrupt or "
                              f"truncated; ingest the source again") from None
        raw = raw.reshape(-1, self.channels)
        if raw.dtype.kind == "f" and not np.isfinite(raw).all():
            raise SignalError(f"chunk {cid} of {self.path} contains NaN or Inf values")
        return raw


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


LONG_AXIS = 1 << 22  # longer axes get float64 coordinates (a margin below float32's 2^23 steps on [-1, 1])

# Unsigned types are held as the signed type of the same width (bit-identical) and widened when converted:
# GPUs index and copy the signed types everywhere.
_AS_SIGNED = {np.dtype("uint16"): (np.int16, 0xFFFF), np.dtype("uint32"): (np.int32, 0xFFFFFFFF)}


class Shard:
    """One rank's chunks, resident: raw values in the source dtype (3 B per 8-bit RGB point), nothing else
    per point. Positions, coordinates, global ids and training targets are computed from (chunk, offset)
    for the rows asked for, on the device that holds the shard (docs/design.md, "Compact shards").

    Rows are grouped by chunk, in `chunk_ids` order; chunk i holds rows chunk_start[i]..chunk_start[i+1].
    """

    def __init__(self, store: "SignalStore", chunk_ids: list[int], raw: torch.Tensor, device="cpu",
                 target_range: TargetRange = TargetRange(0.0, 1.0)):
        device = torch.device(device)
        self.target_range = target_range
        self.chunk_ids = list(chunk_ids)
        self.spatial = tuple(store.spatial)
        self.channels = store.channels
        sizes = [store.chunk_size(c) for c in self.chunk_ids]
        self.chunk_start = np.fromiter(itertools.accumulate(sizes, initial=0), dtype=np.int64)
        slices = [store.chunk_slices(c) for c in self.chunk_ids]
        # Per-chunk geometry (a few numbers per chunk), per axis, (D, chunks): first position and extent
        # along every axis, so the per-point maps below gather every point's chunk numbers with contiguous
        # index_selects and each axis' column stays a contiguous vector.
        dims = len(self.spatial)
        self.chunk_extents = np.array([[s.stop - s.start for s in sl] for sl in slices], dtype=np.int64).reshape(
            len(slices), dims)  # (chunks, D) on the host: the teacher's error record lays out its cells by it
        self._origin = torch.tensor([[s.start for s in sl] for sl in slices], dtype=torch.int64,
                                    device=device).reshape(len(slices), dims).t().contiguous()
        self._extent = torch.tensor([[s.stop - s.start for s in sl] for sl in slices], dtype=torch.int64,
                                    device=device).reshape(len(slices), dims).t().contiguous()
        self._starts = torch.from_numpy(self.chunk_start).to(device)
        self._axis_len = torch.tensor(self.spatial, dtype=torch.int64, device=device)
        self._strides = [math.prod(self.spatial[d + 1:]) for d in range(dims)]  # on the host: no device read
        self._chunk_gid = sum(self._origin[d] * self._strides[d] for d in range(dims))  # chunks' first ids
        self._chunk_grid, self._chunk_shape = tuple(store.grid), tuple(store.chunk_shape)
        self._num_chunks = store.num_chunks
        self.raw = raw.to(device)
        self.device = device
        self._mask = None
        self._source_dtype = np.dtype(store.array.dtype)
        if self._source_dtype in _AS_SIGNED:
            self._mask = _AS_SIGNED[self._source_dtype][1]
        # targets = raw * a + b: the store's normalization to [0, 1], then the training range.
        self._a, self._b = store.scale, -store.offset * store.scale
        self._wide = self._source_dtype.itemsize >= 4  # 32-bit values need float64 for the affine map
        # float32 has a 24-bit mantissa: on [-1, 1] it tells apart neighbours of an axis up to ~2^23 long.
        self.long_axis = max(self.spatial) > LONG_AXIS

    @property
    def num_points(self) -> int:
        return int(self.chunk_start[-1])

    def all_rows(self) -> torch.Tensor:
        return torch.arange(self.num_points, device=self.device)

    def in_chunk(self, rows: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Each row's chunk (position in this shard) and its position inside that chunk, one (n,) int64
        vector per axis. Each selecting step maps its candidates this way (their ids, then their
        coordinates), so it is written as a few whole-vector ops: one division per axis, contiguous
        gathers (0.5-0.6 of the time of the (n, D) version it replaced; bench/results/scale_long.md)."""
        rows = rows.long()
        chunk = torch.searchsorted(self._starts[1:], rows, right=True)
        offset = rows - self._starts.index_select(0, chunk)
        inside = [offset] * len(self.spatial)
        for d in reversed(range(len(self.spatial))):  # row-major inside the chunk: the last axis fastest
            extent = self._extent[d].index_select(0, chunk)
            quotient = offset // extent
            inside[d], offset = offset - quotient * extent, quotient
        return chunk, inside

    def positions(self, rows: torch.Tensor) -> torch.Tensor:
        """Integer grid positions of the rows, (n, D) int64."""
        chunk, inside = self.in_chunk(rows)
        return torch.stack([p + self._origin[d].index_select(0, chunk) for d, p in enumerate(inside)], dim=1)

    def coords(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Coordinates in [-1, 1] per axis (SIREN and INT both use [-1, 1]; docs/method.md), (n, D):
        float32, or float64 when an axis is longer than float32 can resolve (its neighbouring samples
        would share a coordinate; the SIREN's first layer then runs in float64, model/siren.py)."""
        pos = self.positions(self.all_rows() if rows is None else rows)
        coords = 2.0 * pos.double() / (self._axis_len - 1).clamp(min=1) - 1.0
        return coords if self.long_axis else coords.float()

    def gids(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Global ids (row-major index over the whole grid), (n,) int64: the chunk's first id plus the
        position inside the chunk times the grid's strides."""
        chunk, inside = self.in_chunk(self.all_rows() if rows is None else rows)
        gid = self._chunk_gid.index_select(0, chunk)
        for d, p in enumerate(inside):
            gid += p * self._strides[d]
        return gid

    def rows_of(self, gids: np.ndarray) -> np.ndarray:
        """The rows of this shard that hold the global ids `gids` (int64, any order), in shard order; ids of
        other ranks' chunks are left out. The inverse of gids() without visiting the shard: each id's grid
        position gives its chunk and its offset there, so a fixed set of points (the probe set) is found
        in time proportional to its size, whatever the signal's."""
        gids = np.asarray(gids, dtype=np.int64)
        pos = np.stack(np.unravel_index(gids, self.spatial), axis=1).reshape(len(gids), len(self.spatial))
        cid = np.ravel_multi_index(tuple((pos // np.asarray(self._chunk_shape)).T), self._chunk_grid)
        where = np.full(self._num_chunks, -1, dtype=np.int64)
        where[self.chunk_ids] = np.arange(len(self.chunk_ids))
        p = where[cid]
        mine = p >= 0
        p, pos = p[mine], pos[mine]
        origin, extent = self._origin.cpu().numpy()[:, p], self._extent.cpu().numpy()[:, p]
        offset = np.zeros(len(p), dtype=np.int64)
        for d in range(len(self.spatial)):  # row-major inside the chunk, as positions() reads it
            offset = offset * extent[d] + (pos[:, d] - origin[d])
        return np.sort(self.chunk_start[p] + offset)

    def fetch_targets(self, rows: torch.Tensor) -> torch.Tensor:
        """targets(rows) for any rows, whether or not they are staged: a resident shard holds them all."""
        return self.targets(rows)

    def raw_rows(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The stored values of the rows (all rows: None), (n, C) in the held dtype."""
        return self.raw if rows is None else self.raw.index_select(0, rows)

    # A resident shard holds every chunk: nothing to stage, and a sweep is one pass over the rows.
    # StreamedShard (signal/stream.py) reads chunks from the store for both.
    streamed = False

    def stage(self, plan, step: int) -> None:
        """Make the rows of the batch at `step` readable (a resident shard always is)."""

    def sweep(self, max_points: int):
        """(chunk positions, rows) for consecutive groups of this shard's chunks holding at most
        `max_points` points (at least one chunk), each readable while it is being used: evaluation and
        rendering visit every point this way, resident or streamed."""
        for idx in self._sweep_groups(max_points):
            trim()  # the last group's temporaries (hostmem.py)
            yield idx, torch.arange(int(self.chunk_start[idx[0]]), int(self.chunk_start[idx[-1] + 1]),
                                    device=self.device)

    def close(self) -> None:
        """Stop background reads (a resident shard has none)."""

    def _sweep_groups(self, max_points: int) -> list[list[int]]:
        groups, first = [], 0
        for i in range(1, len(self.chunk_ids) + 1):
            if i == len(self.chunk_ids) or self.chunk_start[i + 1] - self.chunk_start[first] > max_points:
                groups.append(list(range(first, i)))
                first = i
        return groups

    def unit_values(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The source values mapped to [0, 1] (the store's normalization), (n, C) float32."""
        return self._unit(self.raw_rows(rows))

    def _unit(self, raw: torch.Tensor) -> torch.Tensor:
        if self._mask is not None:
            raw = raw.to(torch.int64) & self._mask
        if self._wide:
            return (raw.double() * self._a + self._b).float()
        return raw.float() * self._a + self._b

    def targets(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Training targets: the [0, 1] values mapped to `target_range`, (n, C) float32."""
        return self.target_range.encode(self.unit_values(rows))

    @staticmethod
    def load(store: "SignalStore", chunk_ids: list[int], device="cpu",
             target_range: TargetRange = TargetRange(0.0, 1.0)) -> "Shard":
        """Read the chunks one by one into one preallocated array of the source dtype (the host holds the
        raw shard once, no float copy), checking each for NaN/Inf, then move it to `device`."""
        cls = TableShard if store.table else Shard
        return cls(store, chunk_ids, read_chunks(store, chunk_ids), device, target_range)


class TableShard(Shard):
    """A point table's rows (a shape's samples): coordinates are stored (x, y, z in [-1, 1]), the target is
    the last column; global ids are row numbers, as for any 1-D signal."""

    def coords(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.raw_rows(rows)[:, :-1].float()

    def unit_values(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.raw_rows(rows)[:, -1:].float() * self._a + self._b


def held_dtype(store: "SignalStore") -> np.dtype:
    """The dtype a shard holds the store's values in (unsigned 16/32-bit as the signed type)."""
    dtype = np.dtype(store.array.dtype)
    return np.dtype(_AS_SIGNED.get(dtype, (dtype,))[0])


def read_chunks(store: "SignalStore", chunk_ids: list[int], device=None) -> torch.Tensor:
    """The chunks' raw values one after another, (points, C) in `held_dtype`, read one chunk at a time
    into one preallocated host tensor (with `device`: a census.host_buffer, pinned on a GPU, so that its
    copy to the device is queued without a wait)."""
    sizes = [store.chunk_size(c) for c in chunk_ids]
    dtype = held_dtype(store)
    shape = (sum(sizes), store.channels)
    tdtype = torch.from_numpy(np.zeros(0, dtype)).dtype
    out = torch.empty(shape, dtype=tdtype) if device is None else host_buffer(shape, tdtype, device)
    host = out.numpy()
    row = 0
    for cid, n in zip(chunk_ids, sizes):
        host[row:row + n] = store.read_raw_chunk(cid).view(dtype)
        row += n
    return out
