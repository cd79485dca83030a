"""PSNR (exact: sums of squared errors, added over ranks by the caller) and SSIM, on the [0, 1] scale."""

from __future__ import annotations

import math

import numpy as np

SSIM_MAX_PIXELS = 4096 * 4096  # skimage's SSIM holds ~10 float64 copies of the image


def psnr_db(sse: float, count: int) -> float:
    """PSNR with data range 1 on [0, 1] values (the paper's definition, docs/method.md)."""
    mse = sse / count
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim_of(recon, store) -> float | None:
    """scikit-image's structural_similarity with data range 1, as the paper reports, between the rendered
    Zarr array and the signal store; None when the image is too large to hold in memory for it."""
    side = min(store.spatial)
    if store.num_points > SSIM_MAX_PIXELS or side < 3:
        return None
    from skimage.metrics import structural_similarity

    target = ((store.array[...].astype(np.float64) - store.offset) * store.scale).astype(np.float32)
    # The default 7x7 window needs 7 pixels a side; smaller images use the largest odd window that fits.
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(target, recon[...], data_range=1.0, channel_axis=-1, win_size=win))
