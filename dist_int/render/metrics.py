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


def ssim_of(pred: np.ndarray, target: np.ndarray) -> float | None:
    """scikit-image's structural_similarity with data range 1, as the paper reports; None when too large."""
    if pred.shape[0] * pred.shape[1] > SSIM_MAX_PIXELS:
        return None
    from skimage.metrics import structural_similarity

    return float(structural_similarity(target, pred, data_range=1.0, channel_axis=-1))
