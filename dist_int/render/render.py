"""Render the field chunk by chunk on every rank; for images, an OME-Zarr multiscale pyramid and its export.

Every rank writes the chunks it owns into level 0, in the source's dtype and value range, then the
coarser levels (each a 2x2 mean of the one below, the chunks of a level dealt over the ranks); different
ranks never write the same chunk. A PNG (small 8/16-bit images) or a tiled pyramidal BigTIFF (on request)
is exported from the pyramid by one rank, band by band, in bounded memory (docs/design.md, "Output").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import zarr

from ..files import replaced_when_done
from ..hostmem import trim

from ..model import Predict, forward_rows

PNG_MAX_PIXELS = 8192 * 8192
PYRAMID_TOP = 256       # levels halve the image until its longer side is at most this
OME_VERSION = "0.5"     # OME-NGFF on Zarr v3: axes (c, y, x), a `scale` transformation per level
TIFF_TILE = 512
FORMATS = ("auto", "png", "tiff", "zarr")


def level_shapes(spatial: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) of every pyramid level: level 0 is the image, each next one half (rounded up)."""
    shapes = [tuple(spatial)]
    while max(shapes[-1]) > PYRAMID_TOP:
        shapes.append(tuple(math.ceil(n / 2) for n in shapes[-1]))
    return shapes


def create_output(path: Path, store) -> None:
    """The empty pyramid with its OME-Zarr metadata (one rank, before the others open it)."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    dtype = np.dtype(store.meta["source_dtype"])
    cy, cx = store.chunk_shape
    datasets = []
    for level, (h, w) in enumerate(level_shapes(store.spatial)):
        # dimension_names: OME-Zarr 0.5 requires each array to name its axes as the multiscales do.
        root.create_array(str(level), shape=(store.channels, h, w), chunks=(store.channels, cy, cx), dtype=dtype,
                          fill_value=0, dimension_names=("c", "y", "x"))
        datasets.append({"path": str(level),
                         "coordinateTransformations": [{"type": "scale", "scale": [1.0, 2.0 ** level, 2.0 ** level]}]})
    root.attrs["ome"] = {"version": OME_VERSION, "multiscales": [{
        "name": "reconstruction",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": datasets,
        "type": "mean",
    }]}
    root.attrs["dist_int"] = {"source_dtype": dtype.name, "value_range": list(store.value_range)}


def open_level(path: Path, level: int, mode: str = "r") -> zarr.Array:
    return zarr.open_array(Path(path) / str(level), mode=mode)


def to_source(unit: np.ndarray, dtype: np.dtype, value_range: tuple[float, float]) -> np.ndarray:
    """[0, 1] values back to the source's values: lo + v * (hi - lo), rounded and clipped for integers
    (signed ones too: their range does not start at 0), float32 otherwise."""
    lo, hi = value_range
    raw = lo + unit.astype(np.float64) * (hi - lo)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(raw), info.min, info.max).astype(dtype)
    return raw.astype(np.float32)


@torch.no_grad()
def render_shard(predict: Predict, shard, write, chunk: int) -> float:
    """Render every chunk of the shard and hand it to `write(chunk id, values)` (values: the field on the
    [0, 1] scale, (n, C) in chunk order; the modality stores them); return the shard's sum of squared
    errors on the [0, 1] scale (before any rounding to the source's dtype)."""
    target_range = shard.target_range
    sse = torch.zeros((), dtype=torch.float64, device=shard.device)
    for idx, rows in shard.sweep(chunk):  # groups of whole chunks, readable while used (resident or streamed)
        preds = []
        for part, pred in forward_rows(predict, shard, rows, chunk):
            sse += target_range.squared_error_unit(pred, shard.targets(part))
            preds.append(target_range.decode(pred))
        values = torch.cat(preds).cpu().numpy()
        base = int(shard.chunk_start[idx[0]])
        for i in idx:
            write(shard.chunk_ids[i], values[int(shard.chunk_start[i]) - base:int(shard.chunk_start[i + 1]) - base])
    return float(sse)


def num_levels(path: Path) -> int:
    return len(zarr.open_group(path, mode="r").attrs["ome"]["multiscales"][0]["datasets"])


def build_level(path: Path, level: int, rank: int, world_size: int) -> None:
    """Pyramid level `level` >= 1 as 2x2 means of the level below (an odd edge repeats its last row or
    column), rounded for integers. This rank writes the chunks c with c % world_size == rank; every rank
    must finish level l - 1 before any starts level l."""
    src, dst = open_level(path, level - 1), open_level(path, level, "r+")
    _, h, w = dst.shape
    cy, cx = dst.chunks[1:]
    grid = (math.ceil(h / cy), math.ceil(w / cx))
    for cid in range(rank, grid[0] * grid[1], world_size):
        trim()  # the last block's temporaries (hostmem.py)
        y0, x0 = (cid // grid[1]) * cy, (cid % grid[1]) * cx
        y1, x1 = min(y0 + cy, h), min(x0 + cx, w)
        block = np.asarray(src[:, 2 * y0:2 * y1, 2 * x0:2 * x1], dtype=np.float64)
        pad = ((0, 0), (0, 2 * (y1 - y0) - block.shape[1]), (0, 2 * (x1 - x0) - block.shape[2]))
        block = np.pad(block, pad, mode="edge")
        mean = block.reshape(block.shape[0], y1 - y0, 2, x1 - x0, 2).mean(axis=(2, 4))
        dst[:, y0:y1, x0:x1] = np.round(mean) if np.issubdtype(dst.dtype, np.integer) else mean


def _bands(level: zarr.Array, rows: int):
    """(y, (rows, W, C) band) of a pyramid level, top to bottom."""
    for y in range(0, level.shape[1], rows):
        yield y, np.asarray(level[:, y:y + rows]).transpose(1, 2, 0)


def export(path: Path, dest_stem: Path, fmt: str) -> Path:
    """The picture asked for by render.format, from the pyramid at `path`: png (8/16-bit sources up to
    PNG_MAX_PIXELS; other sources as an 8-bit picture of [0, 1]), tiff (tiled pyramidal BigTIFF in the
    source dtype), zarr (the pyramid only), auto (png where it fits, else zarr). Returns the path."""
    meta = zarr.open_group(path, mode="r").attrs["dist_int"]
    dtype, value_range = np.dtype(meta["source_dtype"]), tuple(meta["value_range"])
    level0 = open_level(path, 0)
    c, h, w = level0.shape
    if fmt == "auto":
        fmt = "png" if h * w <= PNG_MAX_PIXELS and dtype in (np.uint8, np.uint16) else "zarr"
    if fmt == "zarr":
        return Path(path)
    if fmt == "png":
        from PIL import Image

        img = np.asarray(level0[...]).transpose(1, 2, 0)
        if dtype not in (np.uint8, np.uint16):  # a PNG cannot hold signed or float values: 8-bit of [0, 1]
            lo, hi = value_range
            img = to_source((img.astype(np.float64) - lo) / (hi - lo), np.dtype(np.uint8), (0, 255))
        img = img[..., 0] if c == 1 else img
        out = dest_stem.with_suffix(".png")
        with replaced_when_done(out) as tmp:
            if img.dtype == np.uint16 and img.ndim == 3:  # Pillow cannot write 16-bit colour: imagecodecs can
                import imagecodecs

                tmp.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(img)))
            else:
                Image.fromarray(img).save(tmp, format="PNG")
        return out
    return _export_tiff(path, dest_stem.with_suffix(".tif"))


def _export_tiff(path: Path, out: Path) -> Path:
    """A tiled BigTIFF whose first page is level 0 and whose SubIFDs are the coarser levels (the layout
    of pyramidal OME-TIFF, which viewers such as QuPath open at any zoom); one band of tiles in memory."""
    import tifffile

    levels = [open_level(path, i) for i in range(num_levels(path))]
    c = levels[0].shape[0]

    def tiles(level):
        for _, band in _bands(level, TIFF_TILE):
            for x in range(0, band.shape[1], TIFF_TILE):
                t = np.zeros((TIFF_TILE, TIFF_TILE, c), band.dtype)
                part = band[:, x:x + TIFF_TILE]
                t[: part.shape[0], : part.shape[1]] = part
                yield t if c > 1 else t[..., 0]

    # Channels as samples of each pixel (RGB, or gray with extra samples), and OME-XML in the first page:
    # tifffile, QuPath and Bio-Formats then read the file as one multiscale image (series levels).
    photometric = "rgb" if c in (3, 4) else "minisblack"
    extras = {2: ["unspecified"], 4: ["unassalpha"]}.get(c)
    opts = dict(tile=(TIFF_TILE, TIFF_TILE), photometric=photometric, compression="zlib",
                planarconfig="contig" if c > 1 else None, **({"extrasamples": extras} if extras else {}))
    axes = "YXS" if c > 1 else "YX"
    with replaced_when_done(out) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for i, level in enumerate(levels):
            _, h, w = level.shape
            extra = {"subifds": len(levels) - 1, "metadata": {"axes": axes, "Name": "reconstruction"}} if i == 0 \
                else {"subfiletype": 1, "metadata": None}
            tif.write(tiles(level), shape=(h, w, c) if c > 1 else (h, w), dtype=level.dtype, **opts, **extra)
    return out
