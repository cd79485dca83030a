"""render: every rank renders its chunks into the output pyramid; metrics and export."""

from .metrics import psnr_db, ssim_mean, ssim_of, ssim_sums
from .render import FORMATS, build_level, num_levels, create_output, export, open_level, render_shard, to_source

__all__ = ["FORMATS", "build_level", "num_levels", "create_output", "export", "open_level", "psnr_db", "render_shard",
           "ssim_mean", "ssim_of", "ssim_sums", "to_source"]
