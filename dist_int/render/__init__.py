"""render: each rank renders its chunks into the output Zarr store; metrics and export."""

from .metrics import psnr_db, ssim_of
from .render import export, render_shard

__all__ = ["export", "psnr_db", "render_shard", "ssim_of"]
