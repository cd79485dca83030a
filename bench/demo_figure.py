"""Target beside reconstruction for a finished image run, as one PNG (the README's demo picture).
    python bench/demo_figure.py runs/demo docs/demo.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common import ROOT

sys.path.insert(0, str(ROOT))


def main(run_dir: str, out: str) -> None:
    import zarr

    run = Path(run_dir)
    summary = json.loads((run / "summary.json").read_text())
    store = zarr.open_array(run / "signal.zarr", mode="r") if (run / "signal.zarr").is_dir() else None
    if store is None:
        from dist_int.modality.image import load_image as load_source

        target = np.asarray(load_source(summary["signal"])[0][:])
    else:
        target = store[...]
    target = target[..., 0] if target.ndim == 3 and target.shape[-1] == 1 else target
    recon = np.asarray(Image.open(run / Path(summary["reconstruction"]).name))
    h, w = target.shape[:2]
    pad, label = 8, 22
    canvas = Image.new("RGB", (2 * w + 3 * pad, h + label + 2 * pad), "white")
    canvas.paste(Image.fromarray(target).convert("RGB"), (pad, label + pad))
    canvas.paste(Image.fromarray(recon).convert("RGB"), (w + 2 * pad, label + pad))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 5), "target", fill="black")
    draw.text((w + 2 * pad, 5), f"SIREN fit: {summary['psnr_db']:.2f} dB, SSIM {summary['ssim']:.3f}, "
              f"{summary['train_time_s']:.0f} s", fill="black")
    canvas.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
