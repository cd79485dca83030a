"""What the report's pictures of a signal share (each kind draws its own in Modality.figure, called by
report/figures.py). Pictures are made at a bounded size: a gigapixel image is read with a stride
(PREVIEW pixels on its longest side), a long recording as a window and a whole-length envelope."""

from __future__ import annotations

import numpy as np

PREVIEW = 1024  # longest side of an image preview, pixels


def show(ax, img: np.ndarray, title: str, **kw) -> None:
    if img.ndim == 3 and img.shape[-1] not in (3, 4):  # gray, gray + alpha, or many channels: the first
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    ax.imshow(np.clip(img, 0, 1) if "cmap" not in kw else img,
              cmap=kw.pop("cmap", "gray" if img.ndim == 2 else None), **kw)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def triptych(axes, target: np.ndarray, recon: np.ndarray, what: str) -> None:
    """Target, reconstruction and the error map (mean |error| over channels) on one row."""
    err = np.abs(recon - target).mean(axis=-1)
    show(axes[0], target, f"target {what}")
    show(axes[1], recon, f"reconstruction {what}")
    show(axes[2], err, f"|error| (max {err.max():.3f})", cmap="inferno", vmin=0, vmax=max(err.max(), 1e-6))
