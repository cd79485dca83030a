"""Source file -> Zarr v3 store: one array (*spatial, C), chunked, with the normalization in its attributes.

Images come through Pillow (PNG, JPEG, ...) or tifffile (TIFF, BigTIFF, OME-TIFF). TIFFs are read lazily
through tifffile's zarr view and copied one band of chunk rows at a time, so a gigapixel TIFF never sits
whole in memory. The store keeps the source dtype (lossless, small); the reader normalizes to [0, 1].
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import zarr

from .errors import SignalError

ATTR = "dist_int"
BUILTINS = ("camera", "astronaut", "coffee", "chelsea")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _value_range(dtype: np.dtype, data) -> tuple[float, float]:
    """Integers map their whole dtype range to [0, 1]; floats their finite min..max (checked for NaN/Inf)."""
    if dtype == np.bool_:
        return 0.0, 1.0
    if np.issubdtype(dtype, np.integer):
        if dtype.itemsize > 4:
            # (raw - lo) / (hi - lo) cannot be computed exactly in float64 for a 64-bit range (2^64 > 2^53).
            raise SignalError(f"{dtype} pixels: a 64-bit integer range cannot be normalized to [0, 1] "
                              f"without overflow or rounding; convert the image to 32-bit integers or float")
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    if np.issubdtype(dtype, np.floating):
        lo, hi = np.inf, -np.inf
        for band in _bands(data, 1024):
            if not np.isfinite(band).all():
                raise SignalError("the signal contains NaN or Inf values; clean or mask them before ingesting")
            lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
        if hi <= lo:
            hi = lo + 1.0
        return lo, hi
    raise SignalError(f"unsupported pixel type {dtype}; use integer or floating-point images")


def _bands(data, rows: int):
    for y in range(0, data.shape[0], rows):
        yield np.asarray(data[y:y + rows])


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
    try:
        with im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SignalError(f"cannot read image {path}: {e}. Is the file complete and an image?") from None
    return arr


def _open_tiff(path: Path):
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        store = series.aszarr()
        arr = zarr.open_array(store, mode="r")
    except Exception as e:  # tifffile raises many types for damaged files
        raise SignalError(f"cannot read TIFF {path}: {e}. Is the file complete?") from None
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
    """Return (array-like (H, W[, C]), name, sha256 or None, closer). allow_large: read PNG/JPEG files
    beyond Pillow's decompression-bomb limit (with a warning)."""
    if src.startswith("builtin:"):
        return _builtin(src)
    path = Path(src)
    if not path.exists():
        raise SignalError(f"signal file not found: {src}")
    if path.is_dir():
        raise SignalError(f"{src} is a folder but not a readable Zarr store (no zarr.json)")
    if path.stat().st_size == 0:
        raise SignalError(f"signal file {src} is empty")
    sha = file_sha256(path)
    if path.name.lower().endswith(TIFF_SUFFIXES):
        arr, shape, axes, keep, tif = _open_tiff(path)
        if len(keep) == len(shape):
            view = arr
        else:
            index = tuple(slice(None) if i in keep else 0 for i in range(len(shape)))
            view = _Squeezed(arr, index, tuple(shape[i] for i in keep))
        return view, path.name, sha, tif.close
    return _read_pillow(path, allow_large), path.name, sha, None


class _Squeezed:
    """A lazy view of a zarr array with some singleton axes fixed at 0 (row slicing only)."""

    def __init__(self, arr, index, shape):
        self.arr, self.index, self.shape, self.dtype = arr, index, shape, arr.dtype
        self.ndim = len(shape)
        self._first = next(i for i, s in enumerate(index) if s == slice(None))

    def __getitem__(self, rows: slice):
        index = list(self.index)
        index[self._first] = rows
        return np.asarray(self.arr[tuple(index)])


def ingest(src: str, dest: str | Path, chunk: int = 128, progress=None, allow_large: bool = False) -> Path:
    """Write `src` into a new Zarr store at `dest`. Never overwrites: `dest` must not exist."""
    dest = Path(dest)
    if dest.exists():
        raise SignalError(f"{dest} already exists; choose another destination or delete it first")
    data, name, sha, close = load_source(src, allow_large)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        if data.ndim == 2:
            channels = 1
        elif data.ndim == 3 and data.shape[-1] <= 4:
            channels = data.shape[-1]
        else:
            raise SignalError(
                f"{src} has shape {tuple(data.shape)}; an image must be (H, W) or (H, W, C) with C <= 4")
        h, w = data.shape[:2]
        if h < 2 or w < 2:
            raise SignalError(f"{src} is {h}x{w}; an image needs at least 2x2 pixels")
        dtype = np.dtype(data.dtype)
        lo, hi = _value_range(dtype, data)
        shutil.rmtree(tmp, ignore_errors=True)
        arr = zarr.create_array(tmp, shape=(h, w, channels), chunks=(chunk, chunk, channels),
                                dtype=dtype, fill_value=0)
        for y in range(0, h, chunk):
            band = np.asarray(data[y:y + chunk])
            arr[y:y + band.shape[0]] = band.reshape(band.shape[0], w, channels)
            if progress:
                progress(min(y + chunk, h), h)
        arr.attrs[ATTR] = {
            "kind": "image",
            "source": name,
            "source_sha256": sha,
            "source_dtype": dtype.name,
            "value_range": [lo, hi],
            "normalization": "(raw - value_range[0]) / (value_range[1] - value_range[0])",
        }
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left behind when something failed
        if close:
            close()
    return dest
