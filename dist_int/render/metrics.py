"""PSNR (exact: sums of squared errors, added over ranks by the caller) and SSIM, on the [0, 1] scale."""

from __future__ import annotations

import math

import numpy as np


def psnr_db(sse: float, count: int) -> float:
    """PSNR with data range 1 on [0, 1] values (the paper's definition, docs/method.md)."""
    mse = sse / count
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim_of(recon, store, tile: int = 1024) -> float | None:
    """scikit-image's structural_similarity (data range 1, 7x7 uniform window, the mean over the image
    less a 3-pixel border, averaged over channels), as the paper reports, between the rendered Zarr array
    and the signal store, in bounded memory: computed tile by tile with a halo of half a window, which
    gives exactly the whole-image value since each SSIM value depends only on its window. None for images
    under 3 pixels a side (smaller images use the largest odd window that fits)."""
    from skimage.metrics import structural_similarity

    if len(store.spatial) != 2:
        return None
    h, w = store.spatial
    side = min(h, w)
    if side < 3:
        return None
    win = min(7, side if side % 2 else side - 1)
    pad = (win - 1) // 2
    sums = np.zeros(store.channels)
    for y0 in range(pad, h - pad, tile):
        y1 = min(y0 + tile, h - pad)
        for x0 in range(pad, w - pad, tile):
            x1 = min(x0 + tile, w - pad)
            window = (slice(y0 - pad, y1 + pad), slice(x0 - pad, x1 + pad))
            target = (store.array[window].astype(np.float64) - store.offset) * store.scale
            pred = np.asarray(recon[window], dtype=np.float64)
            for c in range(store.channels):
                _, smap = structural_similarity(target[..., c].astype(np.float32), pred[..., c], data_range=1.0,
                                                win_size=win, full=True)
                sums[c] += smap[pad:smap.shape[0] - pad, pad:smap.shape[1] - pad].sum(dtype=np.float64)
    return float(np.mean(sums / ((h - 2 * pad) * (w - 2 * pad))))
