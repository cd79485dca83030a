"""PSNR (exact: sums of squared errors, added over ranks by the caller) and SSIM, on the [0, 1] scale."""

from __future__ import annotations

import math

import numpy as np

from ..hostmem import trim


def psnr_db(sse: float, count: int) -> float:
    """PSNR with data range 1 on [0, 1] values (the paper's definition, docs/method.md)."""
    mse = sse / count
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _ssim_window(store) -> tuple[int, int] | None:
    """(window, border) for the image, or None: SSIM needs 3 pixels a side (smaller images than 7 use
    the largest odd window that fits)."""
    if len(store.spatial) != 2 or min(store.spatial) < 3:
        return None
    side = min(store.spatial)
    win = min(7, side if side % 2 else side - 1)
    return win, (win - 1) // 2


def ssim_sums(recon, store, tile: int = 1024, rank: int = 0, world_size: int = 1) -> np.ndarray | None:
    """Per-channel sums of the SSIM map over this rank's tiles (tile i belongs to rank i % world_size);
    the ranks' sums add up to the whole image's. recon: (C, H, W) in the source's values, like the
    store (the output pyramid's level 0). None where the image is too small for SSIM.

    scikit-image's structural_similarity (data range 1, 7x7 uniform window, the mean over the image less
    a 3-pixel border, averaged over channels), as the paper reports, in bounded memory: tile by tile with
    a halo of half a window, which gives exactly the whole-image value since each SSIM value depends only
    on its window."""
    from skimage.metrics import structural_similarity

    shape = _ssim_window(store)
    if shape is None:
        return None
    win, pad = shape
    h, w = store.spatial
    sums = np.zeros(store.channels)
    tiles = [(y0, x0) for y0 in range(pad, h - pad, tile) for x0 in range(pad, w - pad, tile)]
    for y0, x0 in tiles[rank::world_size]:
        trim()  # the last tile's temporaries (hostmem.py)
        y1, x1 = min(y0 + tile, h - pad), min(x0 + tile, w - pad)
        ys, xs = slice(y0 - pad, y1 + pad), slice(x0 - pad, x1 + pad)
        target = (store.array[ys, xs].astype(np.float64) - store.offset) * store.scale
        pred = (np.asarray(recon[:, ys, xs]).astype(np.float64).transpose(1, 2, 0) - store.offset) * store.scale
        for c in range(store.channels):
            _, smap = structural_similarity(target[..., c].astype(np.float32), pred[..., c].astype(np.float32),
                                            data_range=1.0, win_size=win, full=True)
            sums[c] += smap[pad:smap.shape[0] - pad, pad:smap.shape[1] - pad].sum(dtype=np.float64)
    return sums


def ssim_mean(sums: np.ndarray, store) -> float:
    """The SSIM from the summed map of every tile (ssim_sums added over ranks)."""
    _, pad = _ssim_window(store)
    h, w = store.spatial
    return float(np.mean(sums / ((h - 2 * pad) * (w - 2 * pad))))


def ssim_of(recon, store, tile: int = 1024) -> float | None:
    """SSIM of the whole image in one process (ssim_sums over every tile)."""
    sums = ssim_sums(recon, store, tile)
    return None if sums is None else ssim_mean(sums, store)
