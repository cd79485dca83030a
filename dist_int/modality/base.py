"""What a modality supplies, and the defaults every grid signal shares (docs/design.md, "Modalities").

A modality is picked from the store's metadata (`kind`, written at ingest). It decides how the rendered
field is stored and exported and which metrics beyond PSNR it reports; the trainer only calls these
hooks. Coordinates are [-1, 1] on every axis for all grid modalities (store.Shard), the teacher scores
the per-point L1 error and the loss is the squared error, as in the INT paper for every signal kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ..render import to_source
from ..teacher.teacher import point_l1


class Modality:
    """A grid signal whose rendered field is one Zarr array shaped like the store, in the source dtype."""

    kind = ""
    error = staticmethod(point_l1)  # what the teacher scores (grid kinds: the INT paper's L1)

    # ---- output: created by one rank, written chunk by chunk by every rank -------------------------
    def create_output(self, path: Path, store) -> None:
        arr = zarr.create_array(path, shape=store.shape, chunks=(*store.chunk_shape, store.channels),
                                dtype=np.dtype(store.meta["source_dtype"]), fill_value=0)
        arr.attrs["dist_int"] = {"kind": self.kind, "source_dtype": store.meta["source_dtype"],
                                 "value_range": list(store.meta["value_range"])}

    def writer(self, path: Path, store):
        """write(cid, values): a chunk's field on the [0, 1] scale, (n, C) in chunk order, stored in the
        source's dtype and range."""
        out = zarr.open_array(path, mode="r+")
        dtype, value_range = np.dtype(out.dtype), tuple(store.meta["value_range"])

        def write(cid: int, values: np.ndarray) -> None:
            slices = store.chunk_slices(cid)
            block = values.reshape(*(s.stop - s.start for s in slices), -1)
            out[slices] = to_source(block, dtype, value_range)

        return write

    def render_extra(self, predict, path: Path, store, rank: int, world_size: int, device, target_range) -> None:
        """Output beyond the signal's own points (a shape's grid); every rank its share."""

    def num_levels(self, path: Path) -> int:
        return 1

    def build_level(self, path: Path, level: int, rank: int, world_size: int) -> None:
        """Output level `level` >= 1 (only kinds whose num_levels is above 1 have any; images)."""

    # ---- metrics beyond PSNR: sums computed by every rank over its share, added over ranks ---------
    def metric_sums(self, path: Path, store, rank: int, world_size: int) -> np.ndarray | None:
        return None

    def metrics(self, sums: np.ndarray | None, store) -> dict:
        return {}

    def export(self, path: Path, stem: Path, fmt: str, store) -> Path:
        return Path(path)


def unit(values: np.ndarray, store) -> np.ndarray:
    """Source values -> [0, 1] (the store's normalization), float64."""
    return (values.astype(np.float64) - store.offset) * store.scale
