"""PSNR exact over the whole signal (each rank's sum of squared errors, summed), and SSIM."""

from __future__ import annotations

import math

import numpy as np
import torch

SSIM_MAX_PIXELS = 4096 * 4096  # skimage's SSIM holds ~10 float64 copies of the image


def psnr_db(sse: float, count: int) -> float:
    """PSNR with data range 1 (INT_REFERENCE: metrics)."""
    mse = sse / count
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


@torch.no_grad()
def shard_sse(predict, coords: torch.Tensor, values: torch.Tensor, chunk: int) -> float:
    """Sum over points and channels of (clamp(f(x), 0, 1) - y)^2, in float64."""
    total = torch.zeros((), dtype=torch.float64, device=coords.device)
    for i in range(0, coords.shape[0], chunk):
        pred = predict(coords[i:i + chunk]).float().clamp(0, 1)
        total += (pred - values[i:i + chunk]).double().square().sum()
    return float(total)


def ssim_of(recon, store) -> float | None:
    """scikit-image's structural_similarity with data range 1, as the paper reports, between the rendered
    Zarr array and the signal store; None when the image is too large to hold in memory for it."""
    if store.num_points > SSIM_MAX_PIXELS:
        return None
    from skimage.metrics import structural_similarity

    target = ((store.array[...].astype(np.float64) - store.offset) * store.scale).astype(np.float32)
    return float(structural_similarity(target, recon[...], data_range=1.0, channel_axis=-1))
