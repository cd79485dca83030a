"""Images (H, W, C): PNG/JPEG through Pillow, TIFF/BigTIFF/OME-TIFF through tifffile (read lazily), Zarr
arrays and OME-Zarr, and scikit-image's sample images. TIFF and Zarr arrays with a third spatial axis are
volumes (modality/volume.py reads them through the same readers). Output: an OME-Zarr pyramid written by
every rank; SSIM shared by the ranks; PNG or pyramidal BigTIFF export (render/render.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import zarr

from ..errors import SignalError
from ..render import build_level, create_output, export, num_levels, open_level, ssim_mean, ssim_sums, to_source
from ..render.render import PNG_MAX_PIXELS
from ..signal.ingest import data_range
from ..signal.source import ATTR, AxesView, Source, axes_of, file_sha256, is_zarr_dir, zarr_fingerprint
from .base import Modality, Synth, unit

# scikit-image sample images that ship with the package (nothing is downloaded).
BUILTINS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel", "text", "page", "moon",
            "coins", "hubble_deep_field", "retina", "immunohistochemistry")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")


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
    frames = getattr(im, "n_frames", 1)
    if frames > 1:  # an animated GIF/PNG/WebP: one picture would be a silent choice of frame
        im.close()
        raise SignalError(f"{path} is an animated image of {frames} frames; dist_int reads one picture: convert it "
                          f"to a video (e.g. ffmpeg -i {path.name} clip.mp4) to fit all frames, or save the frame "
                          f"you want as a PNG")
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


def load_image(src: str, allow_large: bool = False):
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


def open_array(src: str, allow_large: bool = False) -> Source:
    """A 2-D or 3-D array source (its kind, image or volume, follows from its axes): a Zarr store or
    OME-Zarr image, a TIFF (lazily), a PNG/JPEG, or builtin:NAME."""
    path = Path(src)
    if not src.startswith("builtin:") and is_zarr_dir(path):
        view, linkable = _open_zarr_source(path)
        source = Source(view, view.shape, view.dtype, "", path.name, zarr_fingerprint(path), True, None,
                        path if linkable else None)
    else:
        data, name, sha, close = load_image(src, allow_large)
        shape = tuple(data.shape) + ((1,) if data.ndim == 2 else ())
        if isinstance(data, np.ndarray) and data.ndim == 2:
            data = data[..., None]
        source = Source(data, shape, np.dtype(data.dtype), "", name, sha, close is not None, close)
    source.kind = {3: "image", 4: "volume"}.get(len(source.shape), "")
    return source


# ---- `synth gigapixel`: a test signal for clusters -------------------------------------------------
# A deterministic procedural RGB image with detail at every scale, written chunk by chunk so that
# memory holds one chunk whatever its size. Each channel is a sum of plane waves: octave o has 3 waves
# of frequency 2^o cycles per image edge (from 1 up to a quarter of the pixel rate), directions and
# phases from a generator seeded with (seed, channel, octave), amplitude falling as 2^(-o/2) so that
# fine detail stays visible; the sum is squashed into uint8 through tanh. The store is what
# `dist_int ingest` writes, so the trainer takes it as signal.path directly.
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


class Image(Modality):
    kind = "image"
    synth = Synth("gigapixel", (".zarr",),
                  lambda dest, size, chunk, seed, progress, **_: synth_gigapixel(dest, size, chunk, seed, progress),
                  size=("the image edge in pixels", None), chunk=True,
                  about="an RGB image of any size, written as a store chunk by chunk")
    spatial_dims = 2
    default_chunk = (128, 128)

    def create_output(self, path: Path, store) -> None:
        create_output(path, store)

    def writer(self, path: Path, store):
        level0 = open_level(path, 0, "r+")
        dtype, value_range = np.dtype(level0.dtype), store.value_range

        def write(cid: int, values: np.ndarray) -> None:
            ys, xs = store.chunk_slices(cid)
            block = values.reshape(ys.stop - ys.start, xs.stop - xs.start, -1)
            level0[:, ys, xs] = to_source(block, dtype, value_range).transpose(2, 0, 1)

        return write

    def buffer_bytes(self, store, fmt: str) -> int:
        """SSIM's tile with its halo and scikit-image's temporaries (about 12 float64 images), a band of the
        TIFF export, or the whole picture for a PNG (render/render.py)."""
        h, w = store.spatial
        c, item = store.channels, np.dtype(store.meta["source_dtype"]).itemsize
        ssim = 12 * 8 * c * min(h, 1030) * min(w, 1030)
        band = 3 * 512 * w * c * item
        png = 2 * h * w * c * item if fmt == "png" or (fmt == "auto" and h * w <= PNG_MAX_PIXELS and item <= 2) else 0
        return max(ssim, band, png)

    def num_levels(self, path: Path) -> int:
        return num_levels(path)

    def build_level(self, path: Path, level: int, rank: int, world_size: int) -> None:
        build_level(path, level, rank, world_size)

    def metric_sums(self, path: Path, store, rank: int, world_size: int):
        return ssim_sums(open_level(path, 0), store, rank=rank, world_size=world_size)

    def metrics(self, sums, store) -> dict:
        return {"ssim": None if sums is None else round(ssim_mean(sums, store), 5)}

    def export(self, path: Path, stem: Path, fmt: str, store) -> Path:
        return export(path, stem, fmt)

    def figure(self, plt, run):
        """Target, reconstruction and error (report/figures.py)."""
        from .draw import PREVIEW, triptych

        store = run.store
        h, w = store.spatial
        s = max(1, math.ceil(max(h, w) / PREVIEW))
        target = unit(np.asarray(store.array[::s, ::s, :]), store)
        recon = np.moveaxis(np.asarray(zarr.open_array(run.reconstruction / "0", mode="r")[:, ::s, ::s]), 0, -1)
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
        triptych(axes, target, unit(recon, store), "" if s == 1 else f"(every {s}th pixel)")
        return fig
