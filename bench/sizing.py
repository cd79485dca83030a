"""The sizes the start-up check chooses for each shipped config, at several budgets per rank.

For every shipped config and a signal of the size its kind reaches (stores with metadata and no values:
sizing reads none), on 2 ranks: the passes, batches and windows engine/sizing.py chooses at 1.5, 8 and 64
GB per rank, and whether the shard is resident or streamed. Prints a table (docs/training.md, "How the
parts are sized").

    python bench/sizing.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from common import ROOT, machine, markdown_table

sys.path.insert(0, str(ROOT))

# config -> (signal, shape, chunks, dtype, kind, metadata)
SIGNALS = {
    "image.toml": ("512^2 photo", (512, 512, 3), (128, 128, 3), "uint8", "image", {}),
    "megapixel.toml": ("8192^2 image", (8192, 8192, 3), (512, 512, 3), "uint8", "image", {}),
    "gigapixel.toml": ("32768^2 image (1.07 Gpx)", (32768, 32768, 3), (512, 512, 3), "uint8", "image", {}),
    "hash.toml": ("16384^2 image", (16384, 16384, 3), (128, 128, 3), "uint8", "image", {}),
    "audio.toml": ("1 h of 48 kHz audio", (3600 * 48000, 1), (65536, 1), "int16", "audio",
                   {"samplerate": 48000, "subtype": "PCM_16"}),
    "video.toml": ("2,000 frames of 720p", (2000, 720, 1280, 3), (8, 128, 128, 3), "uint8", "video",
                   {"fps_fraction": "30/1"}),
    "volume.toml": ("1024^3 volume", (1024, 1024, 1024, 1), (32, 32, 32, 1), "uint8", "volume", {}),
    "shape.toml": ("100,000 SDF samples", (100000, 4), (10000, 4), "float32", "shape", {}),
}
BUDGETS_GB = (1.5, 8, 64)


def virtual_store(path: Path, shape, chunks, dtype, kind, meta):
    from dist_int.signal import SignalStore
    from dist_int.signal.source import ATTR

    arr = zarr.create_array(path, shape=shape, chunks=chunks, dtype=dtype)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    value_range = [-2.0, 2.0] if kind == "shape" else ([0.0, 1.0] if info is None else [float(info.min),
                                                                                        float(info.max)])
    arr.attrs[ATTR] = {"kind": kind, "source": "virtual", "source_sha256": "", "source_dtype": np.dtype(dtype).name,
                       "data_range": value_range, "dtype_range": None if info is None else value_range,
                       "value_range": value_range, **meta}
    return SignalStore(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    args = p.parse_args()
    from dist_int.config import load_config
    from dist_int.engine.budget import rank_budget
    from dist_int.engine.sizing import size_parts
    from dist_int.errors import ConfigError

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for config, (label, shape, chunks, dtype, kind, meta) in SIGNALS.items():
            store = virtual_store(Path(work) / config, shape, chunks, dtype, kind, meta)
            cfg = load_config(ROOT / "configs" / config)
            for gb in BUDGETS_GB:
                total = int(gb * 2**30)
                sized, notes = size_parts(cfg, store, args.ranks, torch.device("cpu"), total)
                try:
                    budget = rank_budget(sized, store, 0, args.ranks, torch.device("cpu"), total)[2]
                    shard = sum(store.chunk_size(c) for c in range(store.num_chunks)) / args.ranks
                    held = "resident" if shard * store.channels * np.dtype(dtype).itemsize <= budget.signal_bytes \
                        else "streamed"
                    verdict = held
                except ConfigError as e:
                    verdict = "refused: " + str(e).split(";")[0][:90]
                t, tr = sized.teacher, sized.train
                rows.append([config, label, f"{gb:g}", f"{sized.num_batches(store.num_points):,}",
                             f"{tr.max_points_per_pass or 'one'}", f"{t.score_chunk:,}", f"{tr.eval_chunk:,}",
                             f"{sized.num_windows(store.num_points, store.num_chunks):,}", verdict,
                             "; ".join(notes) or "as configured"])
    table = markdown_table(["config", "signal", "GB per rank", "batches per epoch", "points per pass",
                            "score pass", "eval pass", "windows per epoch", "shard", "changed"], rows)
    print(f"date: {time.strftime('%Y-%m-%d')}\nmachine: {machine()}\ncommand: python bench/sizing.py "
          f"--ranks {args.ranks}\n{args.ranks} ranks; the budget per rank as train.memory_mb would set it.\n\n{table}")


if __name__ == "__main__":
    main()
