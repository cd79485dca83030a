"""`python -m dist_int synth KIND DEST`: write a procedural test signal of a kind.

The kinds, their options and their generators are what each modality declares (Modality.synth, in
dist_int/modality/): this module only builds the command and checks a request before anything is
written. The generators are importable from here too (tests and benchmarks use them).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .errors import SignalError
from .modality import MODALITIES
from .modality.audio import synth_speech
from .modality.image import render_block, synth_gigapixel
from .modality.shape import synth_shape
from .modality.video import synth_video
from .modality.volume import synth_volume

__all__ = ["synth_main", "check_request", "synth_gigapixel", "render_block", "synth_speech", "synth_video",
           "synth_volume", "synth_shape"]

CHUNK = 512  # a gigapixel store's default chunk edge, pixels


def _kinds() -> dict:
    """The procedural signals by the command's word for them, as the modalities declare (Modality.synth)."""
    return {m.synth.name: m.synth for m in MODALITIES.values() if m.synth is not None}


def check_request(kind: str, dest: str, size: float | None, seconds: float | None, frames: int | None,
                  chunk: int | None) -> None:
    """Refuse, with what to do, a request `synth` cannot honour: nothing is written then."""
    spec = _kinds()[kind]
    path = Path(dest)
    if not dest or not path.name or dest.endswith(("/", ".")):
        raise SignalError(f"give the file to write, e.g. python -m dist_int synth {kind} "
                          f"out{spec.suffixes[0]} (got {dest!r})")
    if not path.name.lower().endswith(spec.suffixes):
        raise SignalError(f"synth {kind} writes {' or '.join(spec.suffixes)} files; {path.name} would be "
                          f"{kind} data under another format's name: name it e.g. {path.stem}{spec.suffixes[0]}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SignalError(f"the folder {parent} does not exist; create it first (mkdir -p {parent})")
    numbers = {"--size": size, "--seconds": seconds, "--frames": frames}
    for flag, value in numbers.items():
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SignalError(f"{flag} must be a positive number (got {value})")
    for flag, value, takes in (("--size", size, spec.size), ("--seconds", seconds, spec.seconds),
                               ("--frames", frames, spec.frames), ("--chunk", chunk, spec.chunk or None)):
        if value is not None and takes is None:
            users = [k for k, o in _kinds().items() if getattr(o, flag[2:])] or ["no kind"]
            names = ", ".join(users[:-1]) + " and " + users[-1] if len(users) > 1 else users[0]
            raise SignalError(f"synth {kind} takes no {flag} (only {names} "
                              f"{'does' if len(users) == 1 else 'do'})" + (f"; it writes {spec.about}" if spec.about else ""))
    if spec.size is not None and spec.size[1] is None and size is None:
        raise SignalError(f"synth {kind} needs --size N ({spec.size[0]})")
    if size is not None and size < 2:
        raise SignalError(f"--size must be at least 2 (got {size:g})")
    if frames is not None and frames < 2:
        raise SignalError(f"--frames must be at least 2: a video of one frame is an image (got {frames})")
    if seconds is not None and seconds * 16000 < 2:
        raise SignalError(f"--seconds must hold at least 2 samples at 16 kHz (got {seconds:g})")
    if chunk is not None and chunk < 8:
        raise SignalError(f"--chunk must be at least 8 (got {chunk})")


def synth_main(argv: list[str]) -> int:
    import argparse
    import sys

    kinds = _kinds()
    p = argparse.ArgumentParser(prog="python -m dist_int synth",
                                description="Write a procedural test signal: " +
                                            "; ".join(f"{k} ({o.about}, {'/'.join(o.suffixes)})" for k, o in kinds.items()))
    p.add_argument("kind", choices=list(kinds))
    p.add_argument("dest", help="new path (must not exist); its suffix names the format")
    p.add_argument("--size", type=float, default=None,
                   help=", ".join(f"{k}: {o.size[0]} ({'required' if o.size[1] is None else f'default {o.size[1]}'})"
                                  for k, o in kinds.items() if o.size))
    p.add_argument("--seconds", type=float, default=None,
                   help=", ".join(f"{k}: length (default {o.seconds:g})" for k, o in kinds.items() if o.seconds))
    p.add_argument("--frames", type=int, default=None,
                   help=", ".join(f"{k}: frames (default {o.frames})" for k, o in kinds.items() if o.frames))
    p.add_argument("--chunk", type=int, default=None,
                   help=", ".join(f"{k}: chunk edge in samples (default {CHUNK})" for k, o in kinds.items() if o.chunk))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.time()

    tty = sys.stderr.isatty()

    def progress(done, total):  # a line that rewrites itself on a terminal, every 10 % in a log
        if done == total or done % max(total // (100 if tty else 10), 1) == 0:
            eta = (time.time() - start) / done * (total - done)
            print(f"{chr(13) if tty else ''}synth {done}/{total} chunks, eta {eta:.0f} s", end="" if tty else "\n",
                  file=sys.stderr, flush=True)

    spec = kinds[args.kind]
    try:
        check_request(args.kind, args.dest, args.size, args.seconds, args.frames, args.chunk)
        size = int(args.size) if args.size is not None else (spec.size[1] if spec.size else None)
        dest = spec.write(args.dest, size=size, seconds=args.seconds if args.seconds is not None else spec.seconds,
                          frames=args.frames or spec.frames, chunk=args.chunk or CHUNK, seed=args.seed,
                          progress=progress)
    except SignalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {args.dest}: {e.strerror or e}", file=sys.stderr)
        return 2
    if tty and spec.chunk:
        print(file=sys.stderr)
    print(f"wrote {dest}" + (f": {size}x{size} RGB uint8, chunks of {args.chunk or CHUNK}" if spec.chunk else "")
          + f", {time.time() - start:.1f} s")
    return 0
