"""Volumes (Z, Y, X, C): 3-D TIFF stacks and 3-D Zarr arrays (signal/ingest.py tells them from images by
their axes), any integer or float dtype. Metric: PSNR over the volume. Export: reconstruction.tif in the
source dtype and shape (written slice by slice) and PNG slices through the middle of each axis."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..files import replaced_when_done
from .base import Modality, Synth, fresh_temp, unit


def synth_volume(dest: str | Path, size: int = 48, seed: int = 0) -> Path:
    """A uint16 TIFF stack (size^3): nested shells and blobs of different densities, like a CT phantom.
    Made slice by slice (one pass for the maximum, one to write), so a 1024^3 volume needs a slice of
    memory, not the volume."""
    import tifffile

    dest = Path(dest)
    tmp = fresh_temp(dest)
    rng = np.random.default_rng([seed, 0x701])
    g = (np.arange(size) + 0.5) / size * 2 - 1
    blobs = rng.uniform([-0.5, -0.5, -0.5, 0.08, 0.1], [0.5, 0.5, 0.5, 0.25, 0.4], (6, 5))
    y, x = np.meshgrid(g, g, indexing="ij")

    def slices():
        for z in g:
            r = np.sqrt(z ** 2 + (1.2 * y) ** 2 + x ** 2)
            vol = 0.3 * (r < 0.9) + 0.3 * (r < 0.8)
            for cz, cy, cx, rad, dens in blobs:
                vol += dens * (((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) < rad ** 2)
            vol += 0.05 * np.sin(6 * np.pi * x) * np.cos(4 * np.pi * z) * (r < 0.8)
            yield vol

    peak = max(v.max() for v in slices())
    try:
        tifffile.imwrite(tmp, ((v / peak * 60000).round().astype(np.uint16) for v in slices()),
                         shape=(size, size, size), dtype=np.uint16, photometric="minisblack", bigtiff=size > 512)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class Volume(Modality):
    kind = "volume"
    synth = Synth("volume", (".tif", ".tiff"),
                  lambda dest, size, seed, **_: synth_volume(dest, size, seed=seed),
                  size=("the volume edge", 48), about="a TIFF stack of blobs")
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

    def figure(self, plt, run):
        """Target, reconstruction and error (report/figures.py)."""
        from .draw import triptych

        store = run.store
        field = self.open_output(run.reconstruction)  # indexed (z, y, x, c) as the store
        fig, axes = plt.subplots(3, 3, figsize=(11, 11))
        for axis in range(3):  # the middle slice across each axis
            idx = [slice(None)] * 3
            idx[axis] = store.spatial[axis] // 2
            target = unit(np.asarray(store.array[tuple(idx)]), store)
            recon = unit(np.asarray(field[tuple(idx)]), store)
            triptych(axes[axis], target, recon, f"{'zyx'[axis]} = {store.spatial[axis] // 2}")
        return fig
