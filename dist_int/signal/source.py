"""What every reader hands to the ingest: a lazy `Source` (slabs along the first axis on request), the
lazy N-d array view the TIFF and Zarr readers share, and the fingerprints that tell a changed source.

Readers themselves belong with their kind (dist_int/modality/); this module sits below both, so signal/
never imports modality/ (docs/design.md, "Modalities").
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SignalError

ATTR = "dist_int"  # the store attribute dist_int writes its metadata under


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Source:
    """A signal to ingest: `data[i0:i1]` reads a slab along the first axis as (n, *shape[1:])."""
    data: object
    shape: tuple              # (*spatial, C)
    dtype: np.dtype
    kind: str                 # image, audio, volume, video, shape
    name: str
    fingerprint: str
    parallel: bool            # ranks can read slabs independently (TIFF, Zarr, audio files)
    close: object = None
    link: Path | None = None  # a Zarr array dir the run can read in place
    meta: dict = field(default_factory=dict)  # what the modality keeps (audio: samplerate, subtype; video: fps)


def zarr_fingerprint(path: Path) -> str:
    """Stands for a Zarr source's content without reading every chunk: its metadata and every file's
    path, size and modification time."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        if f.name in ("zarr.json", ".zarray", ".zattrs"):
            h.update(f.read_bytes())
    return h.hexdigest()


def is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in ("zarr.json", ".zarray", ".zgroup"))


def source_fingerprint(src: str) -> str:
    """What a run remembers of its source to notice a change: a file's SHA-256, a Zarr store's
    metadata and file listing."""
    path = Path(src)
    return zarr_fingerprint(path) if is_zarr_dir(path) else file_sha256(path)


class AxesView:
    """A lazy view of an N-D array as (*spatial, C): `axes` names each source axis, z (a leading spatial
    axis: depth, time, page), y, x, c (channels) or 1 (a singleton fixed at 0). Reads slabs along the
    first spatial axis; channels come last (a channel axis is added when there is none)."""

    def __init__(self, arr, axes: str):
        self.arr, self.axes = arr, axes
        self.order = [a for a in "zyxc" if a in axes]
        n = dict(zip(axes, arr.shape))
        self.shape = tuple(n[a] for a in self.order if a != "c") + (n.get("c", 1),)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        first = self.order[0]
        index = tuple(rows if a == first else 0 if a == "1" else slice(None) for a in self.axes)
        block = np.asarray(self.arr[index])
        kept = [a for a in self.axes if a != "1"]
        block = block.transpose([kept.index(a) for a in self.order])
        return block if "c" in self.order else block[..., None]


def axes_of(letters: str, shape: tuple) -> str:
    """tifffile / OME axis letters -> AxesView axes: S and C are channels, Y and X themselves, any other
    axis longer than 1 the leading spatial axis z (Z, Q, I, T), singletons are fixed."""
    out = []
    for a, n in zip(letters.upper(), shape):
        if a in "YX":
            out.append(a.lower())
        elif n == 1:
            out.append("1")
        elif a in "SC":
            out.append("c")
        else:
            out.append("z")
    if out.count("z") > 1 or out.count("c") > 1:
        raise SignalError(f"an array with axes {letters!r} and shape {tuple(shape)} has more than one "
                          f"non-spatial axis longer than 1; dist_int reads (z,) y, x and channels")
    return "".join(out)


