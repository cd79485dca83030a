"""Volumes (Z, Y, X, C): 3-D TIFF stacks and 3-D Zarr arrays (signal/ingest.py tells them from images by
their axes), any integer or float dtype. Metric: PSNR over the volume. Export: reconstruction.tif in the
source dtype and shape (written slice by slice) and PNG slices through the middle of each axis."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import replaced_when_done
from .base import Modality, unit


class Volume(Modality):
    kind = "volume"
    ome_axes = (("c", "channel", 3), ("z", "space", 0), ("y", "space", 1), ("x", "space", 2))
    spatial_dims = 3
    default_chunk = (32, 32, 32)

    def export(self, path: Path, stem: Path, fmt: str, store) -> Path:
        import tifffile
        from PIL import Image

        out = self.open_output(path)
        z, y, x, c = out.shape
        dest = stem.with_suffix(".tif")
        shape = (z, y, x) if c == 1 else (z, y, x, c)
        pages = (np.asarray(out[i]).reshape(shape[1:]) for i in range(z))
        # Channels as samples of each page, as the source had them: gray, gray + one extra sample, RGB, or
        # RGB + alpha (tifffile needs the extra samples named, or it cannot lay out 2 or 4 of them).
        layout = {1: {"photometric": "minisblack"},
                  2: {"photometric": "minisblack", "planarconfig": "contig", "extrasamples": ["unspecified"]},
                  3: {"photometric": "rgb", "planarconfig": "contig"},
                  4: {"photometric": "rgb", "planarconfig": "contig", "extrasamples": ["unassalpha"]}}[c]
        with replaced_when_done(dest) as tmp:
            tifffile.imwrite(tmp, pages, shape=shape, dtype=out.dtype, bigtiff=True, compression="zlib", **layout)
        # Middle slices as 8-bit pictures of the normalized values (a quick look; the TIFF is the data).
        for axis, name in enumerate("zyx"):
            index = [slice(None)] * 3
            index[axis] = out.shape[axis] // 2
            plane = np.clip(unit(np.asarray(out[tuple(index)]), store), 0, 1)
            img = (plane * 255).round().astype(np.uint8)
            img = img[..., 0] if c == 1 else img[..., :3] if c >= 3 else img[..., 0]
            Image.fromarray(img).save(stem.with_name(f"{stem.name}-{name}{out.shape[axis] // 2}.png"))
        return dest
