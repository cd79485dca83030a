"""What a modality supplies, and the defaults every grid signal shares (docs/design.md, "Modalities").

A modality is picked from the store's metadata (`kind`, written at ingest). It decides how the rendered
field is stored and exported and which metrics beyond PSNR it reports; the trainer only calls these
hooks. Coordinates are [-1, 1] on every axis for all grid modalities (store.Shard), the teacher scores
the per-point L1 error and the loss is the squared error, as in the INT paper for every signal kind.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import zarr

from ..errors import SignalError
from ..render import to_source
from ..signal.ingest import data_range
from ..teacher.teacher import point_l1


OME_VERSION = "0.5"  # OME-NGFF on Zarr v3


@dataclass(frozen=True)
class Synth:
    """How `python -m dist_int synth NAME DEST` writes a procedural signal of a kind (dist_int/synth.py
    builds its command line and checks from these): `write(dest, size, seconds, frames, chunk, seed,
    progress)` returns the path written; each option it does not take arrives as None."""

    name: str                       # the command's word for it (e.g. "speech" for audio)
    suffixes: tuple[str, ...]       # names it writes; the first is the one suggested
    write: Callable
    size: tuple[str, int | None] | None = None  # takes --size: (what the size is, its default; None: required)
    seconds: float | None = None    # takes --seconds, with this default
    frames: int | None = None       # takes --frames, with this default
    chunk: bool = False             # takes --chunk
    about: str = ""                 # one line for the command's help


class OutputView:
    """The rendered output in the source's axis order (*spatial, C) whatever order the Zarr array keeps
    (OME-Zarr wants time, then channel, then space): `view[key]` reads, `view[key] = block` writes, with
    `key` indexing the source's axes."""

    def __init__(self, arr, perm: list[int]):
        self.arr, self.perm = arr, perm  # perm[i]: the array axis that holds source axis i
        self.shape = tuple(arr.shape[p] for p in perm)
        self.dtype = arr.dtype

    def _keys(self, key) -> tuple[list, list[int], list[int]]:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (len(self.perm) - len(key))
        stored = [slice(None)] * len(self.perm)
        for i, k in enumerate(key):
            stored[self.perm[i]] = k
        kept = [j for j, k in enumerate(stored) if not isinstance(k, (int, np.integer))]   # array order
        wanted = [self.perm[i] for i, k in enumerate(key) if not isinstance(k, (int, np.integer))]
        return stored, kept, wanted

    def __getitem__(self, key) -> np.ndarray:
        stored, kept, wanted = self._keys(key)
        return np.asarray(self.arr[tuple(stored)]).transpose([kept.index(j) for j in wanted])

    def __setitem__(self, key, block: np.ndarray) -> None:
        stored, kept, wanted = self._keys(key)
        self.arr[tuple(stored)] = np.asarray(block).transpose([wanted.index(j) for j in kept])


class Modality:
    """A grid signal whose rendered field is one Zarr array shaped like the store, in the source dtype:
    an OME-Zarr image (one level) for kinds with `ome_axes`, a plain array otherwise."""

    kind = ""
    error = staticmethod(point_l1)  # what the teacher scores (grid kinds: the INT paper's L1)
    spatial_dims = 2           # axes of samples (a point table: 1, its rows)
    table = False              # a point table (coordinates stored with the values) rather than a grid
    default_chunk = (128, 128)  # chunk edges when signal.chunk = 0
    suffixes: tuple = ()        # file names its own reader takes (images and volumes: see modality/sources.py)
    # The output's OME-Zarr axes, in OME order (time, channel, space): (name, type, source axis index).
    ome_axes: tuple | None = None
    synth: Synth | None = None  # its procedural test signal, if it has one (dist_int/synth.py)

    def figure(self, plt, run):
        """The report's picture of target against reconstruction (report/figures.py): a matplotlib figure,
        or None where the kind draws none."""
        return None

    # ---- output: created by one rank, written chunk by chunk by every rank -------------------------
    def create_output(self, path: Path, store) -> None:
        dtype = np.dtype(store.meta["source_dtype"])
        attrs = {"kind": self.kind, "source_dtype": dtype.name, "value_range": list(store.value_range)}
        chunks = (*store.chunk_shape, store.channels)
        if self.ome_axes is None:
            zarr.create_array(path, shape=store.shape, chunks=chunks, dtype=dtype, fill_value=0).attrs["dist_int"] = attrs
            return
        order = [i for _, _, i in self.ome_axes]
        root = zarr.open_group(path, mode="w", zarr_format=3)
        root.create_array("0", shape=tuple(store.shape[i] for i in order), chunks=tuple(chunks[i] for i in order),
                          dtype=dtype, fill_value=0, dimension_names=tuple(n for n, _, _ in self.ome_axes))
        root.attrs["ome"] = {"version": OME_VERSION, "multiscales": [{
            "name": "reconstruction",
            "axes": [{"name": n, "type": t} for n, t, _ in self.ome_axes],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [1.0] * len(order)}]}]}]}
        root.attrs["dist_int"] = attrs

    def open_output(self, path: Path, mode: str = "r"):
        """The rendered output, indexed in the source's axis order (OutputView)."""
        if self.ome_axes is None or not (Path(path) / "0").exists():  # also outputs of an older dist_int
            return zarr.open_array(path, mode=mode)
        arr = zarr.open_array(Path(path) / "0", mode=mode)
        order = [i for _, _, i in self.ome_axes]
        return OutputView(arr, [order.index(i) for i in range(len(order))])

    def writer(self, path: Path, store):
        """write(cid, values): a chunk's field on the [0, 1] scale, (n, C) in chunk order, stored in the
        source's dtype and range."""
        out = self.open_output(path, "r+")
        dtype, value_range = np.dtype(out.dtype), store.value_range

        def write(cid: int, values: np.ndarray) -> None:
            slices = store.chunk_slices(cid)
            block = values.reshape(*(s.stop - s.start for s in slices), -1)
            out[slices] = to_source(block, dtype, value_range)

        return write

    def buffer_bytes(self, store, fmt: str) -> int:
        """The most memory its rendering, metrics and export hold at once beyond a pass (engine/budget.py):
        here, one sample-thick slab of the output (a frame, a slice) as float64 with some 16 temporaries."""
        return 16 * 8 * math.prod(store.shape[1:])

    def render_extra(self, predict, path: Path, store, rank: int, world_size: int, device, target_range) -> None:
        """Output beyond the signal's own points (a shape's grid); every rank its share."""

    def num_levels(self, path: Path) -> int:
        return 1

    def build_level(self, path: Path, level: int, rank: int, world_size: int) -> None:
        """Output level `level` >= 1 (only kinds whose num_levels is above 1 have any; images)."""

    # ---- values: what reads normalize by unless signal.value_range says otherwise --------------------
    def natural_range(self, dtype: np.dtype, data_min: float, data_max: float) -> list[float]:
        """The data's own min and max (signal/ingest.py, data_range); kinds with a physical scale override."""
        return data_range(dtype, data_min, data_max)

    # ---- PSNR: on the values' range (signal.value_range), data range its span -----------------------
    def psnr_range(self, store) -> tuple[float, float]:
        """The source values whose span is the PSNR's data range (summary.json names it)."""
        return store.value_range

    def psnr_offset_db(self, store) -> float:
        """What to add to a PSNR on the [0, 1] normalized values to get the PSNR on psnr_range: 20 log10 of
        the ratio of the two spans (0 when they are the same range)."""
        lo, hi = self.psnr_range(store)
        vlo, vhi = store.value_range
        return 20 * math.log10((hi - lo) / (vhi - vlo))

    def exact_psnr_db(self, store) -> float:
        """The PSNR at the data's own precision, on psnr_range's scale: that of an error spread evenly over
        one step of the stored values (an integer source's unit, a float source's fp32 resolution). A field
        this close renders the integer source exactly; above it, PSNR measures float rounding, not the fit
        (the divergence guard's ceiling, engine/guard.py)."""
        lo, hi = store.value_range
        step = 1.0 / (hi - lo) if np.dtype(store.array.dtype).kind in "biu" else 2.0 ** -24
        return 10 * math.log10(12.0 / step ** 2) + self.psnr_offset_db(store)

    # ---- metrics beyond PSNR: sums computed by every rank over its share, added over ranks ---------
    def metric_sums(self, path: Path, store, rank: int, world_size: int) -> np.ndarray | None:
        return None

    def metrics(self, sums: np.ndarray | None, store) -> dict:
        """Metrics from the summed sums; a "warnings" list, when there, goes to the summary's warnings."""
        return {}

    def export(self, path: Path, stem: Path, fmt: str, store) -> Path | None:
        """The file users open, from the rendered output at `path`; None: there is none to write."""
        return Path(path)


def fresh_temp(dest: Path) -> Path:
    """Where a procedural signal is written before it is moved to `dest` (which must not exist yet)."""
    if dest.exists():
        raise SignalError(f"{dest} already exists; choose another destination or delete it first")
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}{dest.suffix}")


def unit(values: np.ndarray, store) -> np.ndarray:
    """Source values -> [0, 1] (the store's normalization), float64."""
    return (values.astype(np.float64) - store.offset) * store.scale
