"""`python -m dist_int synth gigapixel OUT.zarr --size N`: a test signal for clusters.

A deterministic procedural RGB image with detail at every scale, written chunk by chunk so that memory
holds one chunk whatever N is. Each channel is a sum of plane waves: octave o has 3 waves of frequency
2^o cycles per image edge (from 1 up to a quarter of the pixel rate), directions and phases from a
generator seeded with (seed, channel, octave), amplitude falling as 2^(-o/2) so that fine detail stays
visible; the sum is squashed into uint8 through tanh. The store is what `dist_int ingest` writes, so the
trainer takes it as signal.path directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import zarr

from .errors import SignalError
from .signal.ingest import ATTR

WAVES_PER_OCTAVE = 3


def _waves(size: int, seed: int) -> list[list[tuple[float, float, float, float]]]:
    """Per channel: (fy, fx, phase, amplitude) of every wave, frequencies in cycles per pixel."""
    octaves = max(1, int(math.log2(max(size // 4, 1))) + 1)
    channels = []
    for c in range(3):
        waves = []
        for o in range(octaves):
            rng = np.random.default_rng([seed, c, o])
            for _ in range(WAVES_PER_OCTAVE):
                angle, phase = rng.uniform(0, 2 * math.pi, 2)
                f = (2.0 ** o) * rng.uniform(0.8, 1.25) / size
                waves.append((f * math.sin(angle), f * math.cos(angle), phase, 2.0 ** (-o / 2)))
        channels.append(waves)
    return channels


def render_block(y0: int, x0: int, h: int, w: int, size: int, seed: int) -> np.ndarray:
    """Pixels [y0, y0+h) x [x0, x0+w) of the image, (h, w, 3) uint8: a pure function of the position."""
    ys = np.arange(y0, y0 + h, dtype=np.float64)[:, None]
    xs = np.arange(x0, x0 + w, dtype=np.float64)[None, :]
    out = np.empty((h, w, 3), np.uint8)
    for c, waves in enumerate(_waves(size, seed)):
        acc = np.zeros((h, w), np.float64)
        total = 0.0
        for fy, fx, phase, amp in waves:
            acc += amp * np.sin(2 * math.pi * (fy * ys + fx * xs) + phase)
            total += amp
        out[..., c] = np.round(127.5 + 127.5 * np.tanh(1.5 * acc / math.sqrt(total))).astype(np.uint8)
    return out


def synth_gigapixel(dest: str | Path, size: int, chunk: int = 512, seed: int = 0, progress=None) -> Path:
    dest = Path(dest)
    if dest.exists():
        raise SignalError(f"{dest} already exists; choose another destination or delete it first")
    if size < 2 or chunk < 8:
        raise SignalError(f"--size must be >= 2 and --chunk >= 8 (got {size}, {chunk})")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        arr = zarr.create_array(tmp, shape=(size, size, 3), chunks=(chunk, chunk, 3), dtype="uint8",
                                fill_value=0)
        blocks = [(y, x) for y in range(0, size, chunk) for x in range(0, size, chunk)]
        for i, (y, x) in enumerate(blocks):
            h, w = min(chunk, size - y), min(chunk, size - x)
            arr[y:y + h, x:x + w] = render_block(y, x, h, w, size, seed)
            if progress:
                progress(i + 1, len(blocks))
        params = {"generator": "gigapixel", "size": size, "seed": seed, "version": 1}
        arr.attrs[ATTR] = {
            "kind": "image",
            "source": f"synth:gigapixel size={size} seed={seed}",
            # A digest of the parameters: the same command always writes the same pixels.
            "source_sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
            "source_dtype": "uint8",
            "value_range": [0.0, 255.0],
            "normalization": "(raw - value_range[0]) / (value_range[1] - value_range[0])",
        }
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def synth_main(argv: list[str]) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m dist_int synth",
                                description="Write a procedural test signal into a new Zarr store.")
    p.add_argument("kind", choices=["gigapixel"])
    p.add_argument("dest", help="new Zarr store path (must not exist)")
    p.add_argument("--size", type=int, required=True, help="image edge in pixels (the image is SIZE x SIZE RGB)")
    p.add_argument("--chunk", type=int, default=512, help="chunk edge in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.time()

    tty = sys.stderr.isatty()

    def progress(done, total):  # a line that rewrites itself on a terminal, every 10 % in a log
        if done == total or done % max(total // (100 if tty else 10), 1) == 0:
            eta = (time.time() - start) / done * (total - done)
            print(f"{chr(13) if tty else ''}synth {done}/{total} chunks, eta {eta:.0f} s", end="" if tty else "\n",
                  file=sys.stderr, flush=True)

    try:
        dest = synth_gigapixel(args.dest, args.size, args.chunk, args.seed, progress)
    except SignalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if tty:
        print(file=sys.stderr)
    print(f"wrote {dest}: {args.size}x{args.size} RGB uint8, chunks of {args.chunk}, "
          f"{time.time() - start:.1f} s")
    return 0
