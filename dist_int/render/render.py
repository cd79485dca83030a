"""Render the field: each rank writes its own chunks into one Zarr store (different chunks, so writes
never collide), then rank 0 exports an image file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import zarr

from ..model import Predict, forward_rows

PNG_MAX_PIXELS = 8192 * 8192


@torch.no_grad()
def render_shard(predict: Predict, shard, store, out: zarr.Array, chunk: int) -> float:
    """Write the field, mapped to [0, 1] and clamped, for every chunk of the shard into `out`; return the
    shard's sum of squared errors on the [0, 1] scale."""
    target_range = shard.target_range
    sse = torch.zeros((), dtype=torch.float64, device=shard.device)
    for i, cid in enumerate(shard.chunk_ids):
        lo, hi = int(shard.chunk_start[i]), int(shard.chunk_start[i + 1])
        preds = []
        for part, pred in forward_rows(predict, shard, torch.arange(lo, hi, device=shard.device), chunk):
            sse += target_range.squared_error_unit(pred, shard.targets(part))
            preds.append(target_range.decode(pred))
        slices = store.chunk_slices(cid)
        out[slices] = torch.cat(preds).cpu().numpy().reshape(*(s.stop - s.start for s in slices), -1)
    return float(sse)


def _to_dtype(band: np.ndarray, dtype: np.dtype, value_range: tuple[float, float]) -> np.ndarray:
    """[0, 1] values back to the source's values: lo + v * (hi - lo), rounded and clipped for integers
    (signed ones too: their range does not start at 0), float32 otherwise."""
    lo, hi = value_range
    raw = lo + band.astype(np.float64) * (hi - lo)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(raw), info.min, info.max).astype(dtype)
    return raw.astype(np.float32)


def export(recon: Path, dest_stem: Path, fmt: str, source_dtype: str,
           value_range: tuple[float, float] | None = None) -> Path:
    """Write the reconstruction as PNG (8/16-bit sources up to PNG_MAX_PIXELS) or tiled BigTIFF, in the
    source's dtype and value range (value_range: the store's; None = the dtype's whole range or [0, 1]).
    Returns the written path."""
    arr = zarr.open_array(recon, mode="r")
    h, w, c = arr.shape
    dtype = np.dtype(source_dtype)
    if value_range is None:
        value_range = ((np.iinfo(dtype).min, np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer)
                       else (0.0, 1.0))
    if fmt == "auto":
        fmt = "png" if h * w <= PNG_MAX_PIXELS and dtype in (np.uint8, np.uint16) else "tiff"
    if fmt == "png":
        from PIL import Image

        if dtype in (np.uint8, np.uint16):
            img = _to_dtype(arr[...], dtype, value_range)
        else:  # a PNG asked for a source PNG cannot hold (signed, float): an 8-bit picture of [0, 1]
            img = _to_dtype(arr[...], np.dtype(np.uint8), (0, 255))
        img = img[..., 0] if c == 1 else img
        path = dest_stem.with_suffix(".png")
        tmp = path.with_name("." + path.name + ".tmp")
        Image.fromarray(img).save(tmp, format="PNG")
        tmp.replace(path)
        return path
    import tifffile

    tile = 512
    path = dest_stem.with_suffix(".tif")
    tmp = path.with_name("." + path.name + ".tmp")

    def tiles():  # row by row of tiles: memory holds one band of `tile` rows
        for y in range(0, h, tile):
            band = _to_dtype(arr[y:y + tile], dtype, value_range)
            for x in range(0, w, tile):
                t = np.zeros((tile, tile, c), band.dtype)
                part = band[:, x:x + tile]
                t[: part.shape[0], : part.shape[1]] = part
                yield t

    out_dtype = _to_dtype(np.zeros(1, np.float32), dtype, value_range).dtype
    tifffile.imwrite(tmp, tiles(), shape=(h, w, c), dtype=out_dtype, tile=(tile, tile), bigtiff=True,
                     photometric="rgb" if c == 3 else "minisblack", compression="zlib")
    tmp.replace(path)
    return path
