"""Helpers shared by the benchmarks: run launch/train.py as a subprocess and read its run folder."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def train_cmd(args: list[str], nproc: int = 0) -> list[str]:
    """The trainer's command line: one process, or torchrun with `nproc` workers."""
    cmd = [sys.executable, str(ROOT / "launch" / "train.py"), *args]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), *cmd[1:]]
    return cmd


def train(args: list[str], nproc: int = 0, prefix: list[str] | None = None) -> dict:
    """Run the trainer (after `prefix`, e.g. taskset); return summary.json plus the metrics.jsonl records."""
    cmd = [*(prefix or []), *train_cmd(args, nproc)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("run.dir=")))
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["metrics"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def resized(source: str, size: int, folder: Path) -> str:
    """The signal resized to size x size as a PNG in `folder` (benchmarks sized for small machines)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from dist_int.modality.image import load_image as load_source

    data, _, _, close = load_source(source)
    img = Image.fromarray(np.asarray(data[:]))
    if close:
        close()
    path = folder / f"signal-{size}.png"
    img.resize((size, size), Image.Resampling.LANCZOS).save(path)
    return str(path)


# Photographs that ship with scikit-image, tiled into mosaics: a "photo mosaic" benchmark signal made on the
# machine (nothing downloaded).
MOSAIC_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
                 "retina", "brick", "grass", "gravel", "moon", "coins", "page", "text")


def mosaic(size: int, folder: Path, tile: int = 512, name: str = "mosaic") -> str:
    """A size x size RGB PNG of scikit-image's photographs, each resized to tile x tile (grayscale ones as
    RGB), row by row, cycling through MOSAIC_PHOTOS (every other cycle mirrored, so no two tiles repeat)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    out = np.zeros((size, size, 3), np.uint8)
    cols = -(-size // tile)
    for i in range(cols * cols):
        photo = np.asarray(getattr(skimage.data, MOSAIC_PHOTOS[i % len(MOSAIC_PHOTOS)])())
        if photo.ndim == 2:
            photo = np.repeat(photo[..., None], 3, -1)
        img = np.asarray(Image.fromarray(photo[..., :3]).resize((tile, tile), Image.Resampling.LANCZOS))
        if (i // len(MOSAIC_PHOTOS)) % 2:
            img = img[:, ::-1]
        y, x = (i // cols) * tile, (i % cols) * tile
        out[y:y + tile, x:x + tile] = img[:size - y, :size - x]
    path = folder / f"{name}-{size}.png"
    Image.fromarray(out).save(path)
    return str(path)
