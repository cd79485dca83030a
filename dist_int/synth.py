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
from .signal.ingest import data_range
from .signal.source import ATTR

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
        lo, hi = 255, 0  # the data's range, as an ingest records it
        for i, (y, x) in enumerate(blocks):
            h, w = min(chunk, size - y), min(chunk, size - x)
            block = render_block(y, x, h, w, size, seed)
            arr[y:y + h, x:x + w] = block
            lo, hi = min(lo, int(block.min())), max(hi, int(block.max()))
            if progress:
                progress(i + 1, len(blocks))
        params = {"generator": "gigapixel", "size": size, "seed": seed, "version": 1}
        arr.attrs[ATTR] = {
            "kind": "image",
            "source": f"synth:gigapixel size={size} seed={seed}",
            # A digest of the parameters: the same command always writes the same pixels.
            "source_sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
            "source_dtype": "uint8",
            "data_range": [float(lo), float(hi)],
            "dtype_range": [0.0, 255.0],
            "value_range": data_range(np.dtype(np.uint8), lo, hi),
            "normalization": "(raw - value_range[0]) / (value_range[1] - value_range[0])",
        }
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _fresh(dest: Path) -> Path:
    if dest.exists():
        raise SignalError(f"{dest} already exists; choose another destination or delete it first")
    return dest.with_name(f".{dest.name}.tmp-{os.getpid()}{dest.suffix}")


def synth_speech(dest: str | Path, seconds: float = 2.0, rate: int = 16000, seed: int = 0, channels: int = 1) -> Path:
    """A voiced, speech-like int16 WAV (or FLAC): a glottal pulse train (pitch gliding around 90-220 Hz with
    vibrato) shaped by three formants that move from syllable to syllable, under a syllable envelope,
    peaking at 0.8 of full scale. Made in blocks of a minute (one pass for the peak, one to write), so
    hours of audio never sit in memory; extra channels are the first delayed by 0.7 ms each (a pair of
    microphones)."""
    import soundfile as sf

    dest = Path(dest)
    tmp = _fresh(dest)
    rng = np.random.default_rng([seed, 0x5EEC])
    n = max(2, int(seconds * rate))
    syllable = 0.25
    count = int(np.ceil(seconds / syllable)) + 1
    formants = rng.uniform([300, 900, 2200], [800, 2200, 3200], (count, 3))
    pitch0 = rng.uniform(90, 220, count)
    voiced = 0.2 + 0.8 * (rng.random(count) > 0.15)
    lag = [int(0.0007 * c * rate) for c in range(channels)]

    def blocks():
        """The mono wave in blocks, the phase carried from block to block."""
        phase0 = 0.0
        for start in range(0, n, 60 * rate):
            t = np.arange(start, min(start + 60 * rate, n)) / rate
            k = np.minimum((t / syllable).astype(int), count - 1)
            frac = t / syllable - k
            pitch = pitch0[k] * (1 + 0.15 * frac) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
            phase = phase0 + 2 * np.pi * np.cumsum(pitch) / rate
            phase0 = phase[-1]
            wave = np.zeros(len(t))
            for h in range(1, 30):  # harmonics of the pitch, weighted by the formant envelope
                f = h * pitch
                gain = sum(np.exp(-0.5 * ((f - formants[k, j]) / (80 + 40 * j)) ** 2) for j in range(3)) / h ** 0.5
                wave += gain * np.sin(h * phase)
            yield wave * np.sin(np.pi * frac) ** 2 * voiced[k]

    peak = max(max(np.abs(w).max() for w in blocks()), 1e-9)
    fmt = "FLAC" if dest.suffix.lower() == ".flac" else "WAV"
    try:
        with sf.SoundFile(str(tmp), "w", samplerate=rate, channels=channels, subtype="PCM_16", format=fmt) as f:
            tail = np.zeros(max(lag))
            for wave in blocks():
                wave = np.concatenate([tail, 0.8 * wave / peak])
                out = np.stack([wave[max(lag) - d:len(wave) - d] for d in lag], 1)
                tail = wave[len(wave) - max(lag):] if max(lag) else tail
                f.write((out * 32767).round().astype(np.int16))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def synth_video(dest: str | Path, frames: int = 16, size: int = 64, fps: int = 12, seed: int = 0,
                height: int | None = None) -> Path:
    """An H.264 clip of size x height (height: size when not given): coloured discs drifting over a moving
    colour gradient, written frame by frame."""
    import av

    from .modality.video import video_pix_fmt

    dest = Path(dest)
    tmp = _fresh(dest)
    rng = np.random.default_rng([seed, 0x71DE0])
    height = height or size
    yy, xx = np.mgrid[0:height, 0:size] / size
    discs = rng.uniform(0, 1, (4, 6))  # y, x, vy, vx, radius, hue
    try:
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = size, height
            stream.pix_fmt = video_pix_fmt(height, size)  # odd sizes too
            stream.options = {"crf": "10"}
            for f in range(frames):
                s = f / max(frames - 1, 1)
                img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (xx + s) + c) * np.cos(np.pi * yy) for c in (0, 2, 4)], -1)
                for y, x, vy, vx, r, hue in discs:
                    cy, cx = (y + (vy - 0.5) * s) % 1, (x + (vx - 0.5) * s) % 1
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.08 + 0.12 * r) ** 2
                    img[mask] = [0.5 + 0.5 * np.cos(2 * np.pi * (hue + c / 3)) for c in range(3)]
                frame = av.VideoFrame.from_ndarray((img * 255).clip(0, 255).astype(np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def synth_volume(dest: str | Path, size: int = 48, seed: int = 0) -> Path:
    """A uint16 TIFF stack (size^3): nested shells and blobs of different densities, like a CT phantom.
    Made slice by slice (one pass for the maximum, one to write), so a 1024^3 volume needs a slice of
    memory, not the volume."""
    import tifffile

    dest = Path(dest)
    tmp = _fresh(dest)
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


def synth_shape(dest: str | Path) -> Path:
    """A watertight CAD-like part: a washer (a ring of outer radius 0.4, inner 0.2, height 0.3) from trimesh."""
    import trimesh

    dest = Path(dest)
    tmp = _fresh(dest)
    try:
        trimesh.creation.annulus(0.2, 0.4, 0.3).export(str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# What each kind writes, by the destination's suffix: a file must be what its name says.
SUFFIXES = {"gigapixel": (".zarr",), "speech": (".wav", ".flac"), "video": (".mp4", ".mkv", ".mov", ".avi"),
            "volume": (".tif", ".tiff"), "shape": (".ply", ".obj", ".stl", ".off", ".glb")}
SIZE_DEFAULT = {"gigapixel": None, "video": 64, "volume": 48}  # kinds that take --size (gigapixel: required)


def check_request(kind: str, dest: str, size: float | None, seconds: float | None, frames: int | None,
                  chunk: int) -> None:
    """Refuse, with what to do, a request `synth` cannot honour: nothing is written then."""
    path = Path(dest)
    if not dest or not path.name or dest.endswith(("/", ".")):
        raise SignalError(f"give the file to write, e.g. python -m dist_int synth {kind} "
                          f"out{SUFFIXES[kind][0]} (got {dest!r})")
    if not path.name.lower().endswith(SUFFIXES[kind]):
        raise SignalError(f"synth {kind} writes {' or '.join(SUFFIXES[kind])} files; {path.name} would be "
                          f"{kind} data under another format's name: name it e.g. {path.stem}{SUFFIXES[kind][0]}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SignalError(f"the folder {parent} does not exist; create it first (mkdir -p {parent})")
    numbers = {"--size": size, "--seconds": seconds, "--frames": frames}
    for flag, value in numbers.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SignalError(f"{flag} must be a positive number (got {value})")
    if size is not None and kind not in SIZE_DEFAULT:
        raise SignalError(f"synth {kind} takes no --size" + (" (a washer of fixed shape; scale it in a mesh "
                                                              "editor)" if kind == "shape" else ""))
    if seconds is not None and kind != "speech":
        raise SignalError(f"synth {kind} takes no --seconds (only speech does)")
    if frames is not None and kind != "video":
        raise SignalError(f"synth {kind} takes no --frames (only video does)")
    if kind == "gigapixel" and size is None:
        raise SignalError("synth gigapixel needs --size N (the image edge in pixels)")
    if size is not None and size < 2:
        raise SignalError(f"--size must be at least 2 (got {size:g})")
    if frames is not None and frames < 2:
        raise SignalError(f"--frames must be at least 2: a video of one frame is an image (got {frames})")
    if seconds is not None and seconds * 16000 < 2:
        raise SignalError(f"--seconds must hold at least 2 samples at 16 kHz (got {seconds:g})")
    if kind == "gigapixel" and chunk < 8:
        raise SignalError(f"--chunk must be at least 8 (got {chunk})")


def synth_main(argv: list[str]) -> int:
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m dist_int synth",
                                description="Write a procedural test signal: gigapixel (a Zarr store), speech "
                                            "(WAV/FLAC), video (MP4), volume (TIFF stack), shape (a mesh).")
    p.add_argument("kind", choices=list(SUFFIXES))
    p.add_argument("dest", help="new path (must not exist); its suffix names the format")
    p.add_argument("--size", type=float, default=None, help="image edge (gigapixel, required), video frame edge "
                                                            "(default 64) or volume edge (default 48)")
    p.add_argument("--seconds", type=float, default=None, help="speech length (default 2)")
    p.add_argument("--frames", type=int, default=None, help="video frames (default 16)")
    p.add_argument("--chunk", type=int, default=512, help="gigapixel: chunk edge in pixels (default 512)")
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
        check_request(args.kind, args.dest, args.size, args.seconds, args.frames, args.chunk)
        size = int(args.size) if args.size is not None else SIZE_DEFAULT.get(args.kind)
        small = {"speech": lambda: synth_speech(args.dest, 2.0 if args.seconds is None else args.seconds,
                                                seed=args.seed),
                 "video": lambda: synth_video(args.dest, args.frames or 16, size, seed=args.seed),
                 "volume": lambda: synth_volume(args.dest, size, seed=args.seed),
                 "shape": lambda: synth_shape(args.dest)}
        if args.kind in small:
            print(f"wrote {small[args.kind]()}")
            return 0
        dest = synth_gigapixel(args.dest, size, args.chunk, args.seed, progress)
    except SignalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.dest}: {e.strerror or e}", file=sys.stderr)
        return 2
    if tty:
        print(file=sys.stderr)
    print(f"wrote {dest}: {size}x{size} RGB uint8, chunks of {args.chunk}, {time.time() - start:.1f} s")
    return 0
