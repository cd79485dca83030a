"""Images (H, W, C): PNG/JPEG through Pillow, TIFF/BigTIFF/OME-TIFF through tifffile, Zarr arrays and
OME-Zarr (signal/ingest.py). Output: an OME-Zarr pyramid written by every rank; SSIM shared by the ranks;
PNG or pyramidal BigTIFF export (render/render.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..render import build_level, create_output, export, num_levels, open_level, ssim_mean, ssim_sums, to_source
from .base import Modality


class Image(Modality):
    kind = "image"

    def create_output(self, path: Path, store) -> None:
        create_output(path, store)

    def writer(self, path: Path, store):
        level0 = open_level(path, 0, "r+")
        dtype, value_range = np.dtype(level0.dtype), tuple(store.meta["value_range"])

        def write(cid: int, values: np.ndarray) -> None:
            ys, xs = store.chunk_slices(cid)
            block = values.reshape(ys.stop - ys.start, xs.stop - xs.start, -1)
            level0[:, ys, xs] = to_source(block, dtype, value_range).transpose(2, 0, 1)

        return write

    def num_levels(self, path: Path) -> int:
        return num_levels(path)

    def build_level(self, path: Path, level: int, rank: int, world_size: int) -> None:
        build_level(path, level, rank, world_size)

    def metric_sums(self, path: Path, store, rank: int, world_size: int):
        return ssim_sums(open_level(path, 0), store, rank=rank, world_size=world_size)

    def metrics(self, sums, store) -> dict:
        return {"ssim": None if sums is None else round(ssim_mean(sums, store), 5)}

    def export(self, path: Path, stem: Path, fmt: str, store) -> Path:
        return export(path, stem, fmt)
