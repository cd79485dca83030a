"""Source file -> Zarr v3 store: one array (*spatial, C), chunked, with the normalization in its attributes.

Images come through Pillow (PNG, JPEG, ...) or tifffile (TIFF, BigTIFF, OME-TIFF). TIFFs are read lazily
through tifffile's zarr view and copied one band of chunk rows at a time, so a gigapixel TIFF never sits
whole in memory. The store keeps the source dtype (lossless, small); the reader normalizes to [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

from .errors import SignalError

ATTR = "dist_int"
# scikit-image sample images that ship with the package (nothing is downloaded).
BUILTINS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "text", "page", "moon",
            "coins", "hubble_deep_field", "retina", "immunohistochemistry")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_pillow(path: Path, allow_large: bool) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Pillow refuses images above its decompression-bomb limit (about 179 M pixels) and warns
            # above half of it: a guard against hostile files. Large local images are the point of
            # dist_int, but lifting the guard is the user's explicit choice.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if allow_large:
                Image.MAX_IMAGE_PIXELS = None
            im = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SignalError(f"{path} is larger than Pillow's decompression-bomb limit ({limit:,} pixels "
                          f"refused, half of that warned); if you trust the file, allow it with "
                          f"signal.allow_large_image=true (train) or --allow-large-image (ingest), or "
                          f"convert it to a tiled TIFF, which is read lazily") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SignalError(f"cannot read image {path}: {e}. Is the file complete and an image?") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if allow_large and limit and im.width * im.height > limit // 2:
        print(f"warning: {path} has {im.width * im.height:,} pixels, beyond Pillow's decompression-bomb "
              f"guard; reading it as allowed (it is decoded whole into memory)", file=sys.stderr, flush=True)
    orientation = 1
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block only loses the orientation
        pass
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16:
        # Pillow reads 16-bit colour PNGs as 8-bit (and 16-bit gray+alpha as RGBA): decode at full depth.
        import imagecodecs

        im.close()
        try:
            arr = imagecodecs.png_decode(path.read_bytes())
        except Exception as e:  # noqa: BLE001
            raise SignalError(f"cannot read image {path}: {e}. Is the file complete and an image?") from None
        return _orient(arr, orientation)
    try:
        with im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SignalError(f"cannot read image {path}: {e}. Is the file complete and an image?") from None
    return _orient(arr, orientation)


def _orient(arr: np.ndarray, code: int) -> np.ndarray:
    """Apply an EXIF orientation (a phone photo is stored sideways with a tag saying how to turn it)."""
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
           8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[code](arr)) if code in ops else arr


def _open_tiff(path: Path):
    import tifffile

    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        kind = {b"\x89PNG": "a PNG", b"\xff\xd8\xff": "a JPEG"}.get(magic[:4], None) or \
            ("a JPEG" if magic[:3] == b"\xff\xd8\xff" else "not a TIFF")
        raise SignalError(f"{path} is named like a TIFF but its content is {kind} file; rename it with its real "
                          f"extension (e.g. .png) or convert it")
    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        store = series.aszarr()
        arr = zarr.open_array(store, mode="r")
    except Exception as e:  # tifffile raises many types for damaged files
        raise SignalError(f"cannot read TIFF {path}: {e}. The file may be truncated or damaged") from None
    shape = tuple(arr.shape)
    axes = series.axes
    # Squeeze singleton non-spatial axes (OME files often carry T=1, Z=1, C=1).
    keep = [i for i, (n, a) in enumerate(zip(shape, axes)) if n > 1 or a in "YX"]
    return arr, shape, axes, keep, tif


def _builtin(src: str):
    """scikit-image's sample images, `builtin:NAME`, or resized to SIZE x SIZE with `builtin:NAME@SIZE`."""
    name, _, size = src.split(":", 1)[1].partition("@")
    if name not in BUILTINS:
        raise SignalError(f"unknown builtin signal '{name}'; choose one of {', '.join(BUILTINS)}")
    if size and (not size.isdigit() or not 2 <= int(size) <= 8192):
        raise SignalError(f"builtin:{name}@{size}: the size must be a whole number of pixels in 2..8192, "
                          f"e.g. builtin:{name}@256")
    import skimage.data

    arr = getattr(skimage.data, name)()
    if size:
        from PIL import Image

        arr = np.asarray(Image.fromarray(arr).resize((int(size), int(size)), Image.Resampling.LANCZOS))
    return arr, src, hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(), None


def load_source(src: str, allow_large: bool = False):
    """Return (array-like (H, W[, C]) or (Z, Y, X[, C]) for TIFF, name, sha256 or None, closer).
    allow_large: read PNG/JPEG files beyond Pillow's decompression-bomb limit (with a warning)."""
    if src.startswith("builtin:"):
        return _builtin(src)
    path = Path(src)
    if not path.exists():
        if path.is_symlink():
            raise SignalError(f"{src} is a symbolic link that does not lead to a file (a loop or a missing "
                              f"target); point signal.path at the file itself")
        raise SignalError(f"signal file not found: {src}")
    if path.is_dir():
        raise SignalError(f"{src} is a folder but not a Zarr store (no zarr.json, .zarray or .zgroup inside)")
    if path.stat().st_size == 0:
        raise SignalError(f"signal file {src} is empty")
    sha = file_sha256(path)
    if path.name.lower().endswith(TIFF_SUFFIXES):
        arr, shape, axes, _, tif = _open_tiff(path)
        try:
            view = AxesView(arr, axes_of(axes, shape))
        except SignalError:
            tif.close()
            raise
        return view, path.name, sha, tif.close
    return _read_pillow(path, allow_large), path.name, sha, None


def _zarr_fingerprint(path: Path) -> str:
    """Stands for a Zarr source's content without reading every chunk: its metadata and every file's
    path, size and modification time."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        if f.name in ("zarr.json", ".zarray", ".zattrs"):
            h.update(f.read_bytes())
    return h.hexdigest()


def _is_zarr_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in ("zarr.json", ".zarray", ".zgroup"))


def source_fingerprint(src: str) -> str:
    """What a run remembers of its source to notice a change: a file's SHA-256, a Zarr store's
    metadata and file listing."""
    path = Path(src)
    return _zarr_fingerprint(path) if _is_zarr_dir(path) else file_sha256(path)


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


def _open_zarr_source(path: Path):
    """(view, linkable): an image array inside a Zarr store: an array (H, W) or (H, W, C), or an
    OME-Zarr multiscale group (its full-resolution level). linkable: a v3 array (H, W, C) with every
    channel in each chunk, which the run can read in place (no copy)."""
    try:
        node = zarr.open(path, mode="r")
    except Exception as e:  # noqa: BLE001
        raise SignalError(f"cannot open Zarr store {path}: {e}") from None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ms = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
        if not ms:
            raise SignalError(f"{path} is a Zarr group, not an image array; give the path of the array inside "
                              f"it (e.g. {path}/0), or an OME-Zarr image")
        arr = node[ms[0]["datasets"][0]["path"]]
        letters = "".join(a["name"][0] if isinstance(a, dict) else str(a)[0] for a in ms[0]["axes"])
        return AxesView(arr, axes_of(letters, arr.shape)), False
    arr = node
    axes = {2: "yx", 3: "yxc" if arr.shape[-1] <= 4 else "zyx", 4: "zyxc"}.get(arr.ndim)
    if axes is None or (arr.ndim == 4 and arr.shape[-1] > 4):
        raise SignalError(f"{path} holds an array of shape {arr.shape}; expected an image (H, W) or (H, W, C) "
                          f"or a volume (Z, Y, X) or (Z, Y, X, C), with C <= 4")
    axes = "".join("1" if n == 1 and a in "zc" else a for a, n in zip(axes, arr.shape))
    # Read in place when every chunk holds all channels and the layout is already (*spatial, C).
    linkable = (arr.metadata.zarr_format == 3 and axes.endswith("c") and arr.chunks[-1] == arr.shape[-1]
                and min(arr.chunks[:-1]) >= 8)
    return AxesView(arr, axes), linkable


KINDS = ("image", "audio", "volume", "video", "shape")
SPATIAL_DIMS = {"image": 2, "audio": 1, "volume": 3, "video": 3, "shape": 1}
DEFAULT_CHUNK = {"image": (128, 128), "audio": (65536,), "volume": (32, 32, 32), "video": (8, 128, 128),
                 "shape": (16384,)}
SHAPE_SUFFIXES = (".ply", ".obj", ".stl", ".off", ".glb", ".gltf")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


@dataclass
class Source:
    """A signal to ingest: `data[i0:i1]` reads a slab along the first axis as (n, *shape[1:])."""
    data: object
    shape: tuple              # (*spatial, C)
    dtype: np.dtype
    kind: str                 # image, audio, volume, video
    name: str
    fingerprint: str
    parallel: bool            # ranks can read slabs independently (TIFF, Zarr, audio files)
    close: object = None
    link: Path | None = None  # a Zarr array dir the run can read in place
    meta: dict = field(default_factory=dict)  # what the modality keeps (audio: samplerate, subtype; video: fps)


def open_source(src: str, allow_large: bool = False, kind: str = "auto", options: dict | None = None) -> Source:
    """Open any supported source lazily and tell its kind: audio files (soundfile), video files (PyAV),
    TIFF and Zarr (an image or a volume by their axes), PNG/JPEG and builtins (images). `kind` other
    than "auto" insists on one and explains a mismatch."""
    path = Path(src)
    lower = path.name.lower()
    if not src.startswith("builtin:") and lower.endswith(SHAPE_SUFFIXES):
        if not path.is_file():
            raise SignalError(f"signal file not found: {src}")
        from ..modality.shape import open_shape

        options = options or {}
        source = open_shape(path, options.get("points", 100000), options.get("sdf") == "watertight")
    elif not src.startswith("builtin:") and lower.endswith(AUDIO_SUFFIXES + VIDEO_SUFFIXES):
        if not path.is_file():
            raise SignalError(f"signal file not found: {src}")
        if lower.endswith(AUDIO_SUFFIXES):
            from ..modality.audio import open_audio as opener
        else:
            from ..modality.video import open_video as opener
        source = opener(path)
    elif not src.startswith("builtin:") and _is_zarr_dir(path):
        view, linkable = _open_zarr_source(path)
        source = Source(view, view.shape, view.dtype, "", path.name, _zarr_fingerprint(path), True, None,
                        path if linkable else None)
    else:
        data, name, sha, close = load_source(src, allow_large)
        shape = tuple(data.shape) + ((1,) if data.ndim == 2 else ())
        if isinstance(data, np.ndarray) and data.ndim == 2:
            data = data[..., None]
        source = Source(data, shape, np.dtype(data.dtype), "", name, sha, close is not None, close)
    if not source.kind:
        source.kind = {3: "image", 4: "volume"}.get(len(source.shape), "")
    try:
        _check_kind(src, source, kind)
    except SignalError:
        if source.close:
            source.close()
        raise
    return source


def _check_kind(src: str, source: Source, kind: str) -> None:
    got = source.kind
    if not got or (got not in ("audio", "shape") and source.shape[-1] > 4):
        raise SignalError(f"{src} has shape {tuple(source.shape)}; expected an image (H, W[, C<=4]), a volume "
                          f"(Z, Y, X[, C<=4]), audio or video")
    if kind != "auto" and kind != got:
        if kind == "volume" and got == "image":
            raise SignalError(f"signal.kind = \"volume\" but {src} is a 2-D image of shape "
                              f"{tuple(source.shape[:-1])}; a volume needs a 3-D stack (several TIFF pages or a "
                              f"Z axis)")
        raise SignalError(f"signal.kind = \"{kind}\" but {src} reads as {got} of shape {tuple(source.shape)}; "
                          f"set signal.kind = \"auto\" or \"{got}\"")
    spatial = source.shape[:-1]
    if min(spatial) < 2:
        raise SignalError(f"{src} is {'x'.join(map(str, spatial))}; a signal needs at least 2 samples per axis")


def resolve_chunk(chunk, kind: str) -> tuple[int, ...]:
    """signal.chunk: 0 (the modality's default), one edge for every axis, or one per axis."""
    dims = SPATIAL_DIMS[kind]
    if chunk in (0, None, []):
        return DEFAULT_CHUNK[kind]
    if isinstance(chunk, int):
        return (chunk,) * dims
    if len(chunk) != dims:
        raise SignalError(f"signal.chunk = {list(chunk)} gives {len(chunk)} edges but this {kind} signal has "
                          f"{dims} {'axis' if dims == 1 else 'axes'}; give one edge, or {dims}")
    return tuple(int(c) for c in chunk)


def begin_ingest(src: str, dest: str | Path, chunk=0, allow_large: bool = False,
                 progress=None, kind: str = "auto", options: dict | None = None) -> dict:
    """The first part of an ingest (one rank): open and check the source, create the destination in a
    hidden folder beside `dest`, and copy it all when only one process can read the source (PNG/JPEG,
    builtins, video). Returns the plan, plain JSON, that ingest_part and finish_ingest take on every rank.

    A Zarr array with every channel in its chunks is not copied: the store links its chunk files and
    carries dist_int's attributes in its own metadata (re-chunking only when needed)."""
    dest = Path(dest)
    if dest.exists():
        raise SignalError(f"{dest} already exists; choose another destination or delete it first")
    source = open_source(src, allow_large, kind, options)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    plan = {"src": src, "dest": str(dest), "tmp": str(tmp), "name": source.name, "sha": source.fingerprint,
            "allow_large": allow_large, "mode": "link" if source.link else "copy", "parallel": source.parallel,
            "kind": source.kind, "meta": source.meta, "options": options or {}}
    try:
        _check_dtype(source.dtype)
        spatial = source.shape[:-1]
        # A chunk never exceeds the signal: a huge signal.chunk on a small signal costs nothing.
        edges = tuple(min(e, n) for e, n in zip(resolve_chunk(chunk, source.kind), spatial))
        plan.update(shape=[int(n) for n in source.shape], dtype=source.dtype.name, chunk=list(edges))
        shutil.rmtree(tmp, ignore_errors=True)
        if source.link:
            tmp.mkdir(parents=True)
            meta = json.loads((source.link / "zarr.json").read_text())
            (tmp / "zarr.json").write_text(json.dumps(meta))
            for entry in source.link.iterdir():  # the chunk files, read in place through links
                if entry.name != "zarr.json":
                    (tmp / entry.name).symlink_to(entry.resolve())
            plan["chunk"] = [int(c) for c in source.data.arr.chunks[:-1]]
        else:
            zarr.create_array(tmp, shape=tuple(source.shape), chunks=(*edges, source.shape[-1]),
                              dtype=source.dtype, fill_value=0)
        if not source.parallel:  # decoded in this process only: copy it now
            plan["range"] = ingest_part(plan, 0, 1, progress, source)
            plan["done"] = True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if source.close:
            source.close()
    return plan


def _check_dtype(dtype: np.dtype) -> None:
    if dtype == np.bool_ or np.issubdtype(dtype, np.floating):
        return
    if np.issubdtype(dtype, np.integer):
        if dtype.itemsize > 4:
            # (raw - lo) / (hi - lo) cannot be computed exactly in float64 for a 64-bit range (2^64 > 2^53).
            raise SignalError(f"{dtype} values: a 64-bit integer range cannot be normalized to [0, 1] "
                              f"without overflow or rounding; convert the data to 32-bit integers or float")
        return
    raise SignalError(f"unsupported value type {dtype}; use integer or floating-point data")


def ingest_part(plan: dict, rank: int, world_size: int, progress=None, source: Source | None = None) -> list[float]:
    """This rank's share of the copy (slabs of one chunk along the first axis, slab i on rank
    i % world_size), checking float values for NaN/Inf; returns [min, max] of the float values it read
    ([inf, -inf] otherwise)."""
    close = None
    if source is None:
        source = open_source(plan["src"], plan["allow_large"], plan["kind"], plan.get("options"))
        close = source.close
    lo, hi = np.inf, -np.inf
    try:
        n0, rows = plan["shape"][0], plan["chunk"][0]
        is_float = np.issubdtype(np.dtype(plan["dtype"]), np.floating)
        out = zarr.open_array(plan["tmp"], mode="r+") if plan["mode"] == "copy" else None
        if out is None and not is_float:
            return [lo, hi]  # linked integers: nothing to read (their dtype's range is used)
        slabs = list(range(0, n0, rows))
        for n, y in enumerate(slabs[rank::world_size]):
            try:
                slab = np.asarray(source.data[y:y + rows]).reshape(-1, *plan["shape"][1:])
            except (SignalError, OSError):
                raise
            except Exception as e:  # noqa: BLE001 - decoders raise many types for damaged data
                raise SignalError(f"cannot read {plan['src']} at {y}..{y + rows} along its first axis: {e}. "
                                  f"The file may be truncated or damaged") from None
            if is_float and not np.isfinite(slab).all():
                raise SignalError(f"{plan['src']} contains NaN or Inf values (at {y}..{y + len(slab)} "
                                  f"along its first axis); clean or mask them before ingesting")
            if slab.size:
                lo, hi = min(lo, float(slab.min())), max(hi, float(slab.max()))
            if out is not None:
                out[y:y + slab.shape[0]] = slab
            if progress:
                progress(min((n + 1) * world_size * rows, n0), n0)
    finally:
        if close:
            close()
    return [lo, hi]


def finish_ingest(plan: dict, value_min: float, value_max: float) -> Path:
    """The last part (one rank, after every rank's ingest_part): the normalization, the attributes, and
    the store moved into place. value_min/max: of float values over all ranks."""
    dtype = np.dtype(plan["dtype"])
    if dtype == np.bool_:
        lo, hi = 0.0, 1.0
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = float(info.min), float(info.max)
        if dtype.kind == "u" and dtype.itemsize > 1 and plan["kind"] != "audio" and np.isfinite(value_max):
            # 10/12/14-bit sensor data in uint16: normalize by the bit depth the values use, not by
            # 65535, which would squeeze them into a sliver of [0, 1] (and inflate PSNR by ~24 dB).
            bits = max(8, int(value_max).bit_length())
            lo, hi = 0.0, float(2 ** bits - 1)
            plan.setdefault("meta", {})["bit_depth"] = bits
    elif plan["kind"] == "shape":
        lo, hi = -2.0, 2.0  # signed distances on the [-1, 1] domain (modality/shape.py, SDF_RANGE)
    elif plan["kind"] == "audio":
        # A waveform lives on [-1, 1] (PSNR with data range 2, the INT paper's audio metric); louder
        # float files keep 0 at the centre.
        peak = max(1.0, abs(value_min), abs(value_max))
        lo, hi = -peak, peak
    else:
        lo, hi = (value_min, value_max) if value_max > value_min else (value_min, value_min + 1.0)
    tmp, dest = Path(plan["tmp"]), Path(plan["dest"])
    try:
        arr = zarr.open_array(tmp, mode="r+")
        arr.attrs[ATTR] = {
            **plan.get("meta", {}),
            "kind": plan["kind"],
            "source": plan["name"],
            "source_sha256": plan["sha"],
            "source_dtype": dtype.name,
            "value_range": [lo, hi],
            "normalization": "(raw - value_range[0]) / (value_range[1] - value_range[0])",
            "linked": plan["src"] if plan["mode"] == "link" else None,
        }
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left behind when something failed
    return dest


def ingest(src: str, dest: str | Path, chunk=0, progress=None, allow_large: bool = False,
           kind: str = "auto") -> Path:
    """Write `src` into a new Zarr store at `dest` in this process. Never overwrites: `dest` must not exist."""
    plan = begin_ingest(src, dest, chunk, allow_large, progress, kind)
    try:
        lo, hi = plan["range"] if plan.get("done") else ingest_part(plan, 0, 1, progress)
    except BaseException:
        shutil.rmtree(plan["tmp"], ignore_errors=True)
        raise
    return finish_ingest(plan, lo, hi)
