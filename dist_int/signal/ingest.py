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


class _ZarrView:
    """A lazy (H, W, C) view of a Zarr array whose axes may come in another order (OME-Zarr: c, y, x)
    and carry singleton extra axes; reads bands of rows."""

    def __init__(self, arr, axes: str):
        self.arr, self.axes = arr, axes
        keep = [a for a, n in zip(axes, arr.shape) if n > 1 or a in "yx"]
        extra = [a for a in keep if a not in "yxc"]
        if extra or "y" not in axes or "x" not in axes:
            raise SignalError(f"a Zarr array with axes {axes!r} and shape {arr.shape} is not an image: "
                              f"expected y, x and optionally c (singleton t/z axes are fine)")
        n = dict(zip(axes, arr.shape))
        self.shape = (n["y"], n["x"], n.get("c", 1))
        self.dtype = np.dtype(arr.dtype)
        self.ndim = 3

    def __getitem__(self, rows: slice) -> np.ndarray:
        index = tuple(rows if a == "y" else slice(None) if a in "xc" else 0 for a in self.axes)
        band = np.asarray(self.arr[index])
        order = [a for a in self.axes if a in "yxc"]
        band = band.transpose([order.index(a) for a in "yxc" if a in order])
        return band if "c" in order else band[..., None]


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
        axes = "".join(a["name"][0].lower() if isinstance(a, dict) else str(a)[0].lower() for a in ms[0]["axes"])
        return _ZarrView(node[ms[0]["datasets"][0]["path"]], axes), False
    arr = node
    if arr.ndim == 2:
        return _ZarrView(arr, "yx"), False
    if arr.ndim == 3 and arr.shape[-1] <= 4:
        linkable = (arr.metadata.zarr_format == 3 and arr.chunks[-1] == arr.shape[-1]
                    and min(arr.chunks[:2]) >= 8)
        return _ZarrView(arr, "yxc"), linkable
    raise SignalError(f"{path} holds an array of shape {arr.shape}; an image must be (H, W) or (H, W, C) "
                      f"with C <= 4")


def open_source(src: str, allow_large: bool = False):
    """(data, name, fingerprint, closer, parallel, link): data is array-like (H, W[, C]); `parallel`:
    ranks can read bands of it independently (TIFF, Zarr); `link`: a Zarr array dir usable in place."""
    path = Path(src)
    if not src.startswith("builtin:") and _is_zarr_dir(path):
        view, linkable = _open_zarr_source(path)
        return view, path.name, _zarr_fingerprint(path), None, True, (path if linkable else None)
    data, name, sha, close = load_source(src, allow_large)
    return data, name, sha, close, close is not None, None


def _check_image(src: str, data) -> tuple[int, int, int]:
    if data.ndim == 2:
        channels = 1
    elif data.ndim == 3 and data.shape[-1] <= 4:
        channels = data.shape[-1]
    else:
        raise SignalError(f"{src} has shape {tuple(data.shape)}; an image must be (H, W) or (H, W, C) with C <= 4")
    h, w = data.shape[:2]
    if h < 2 or w < 2:
        raise SignalError(f"{src} is {h}x{w}; an image needs at least 2x2 pixels")
    return h, w, channels


def begin_ingest(src: str, dest: str | Path, chunk: int = 128, allow_large: bool = False,
                 progress=None) -> dict:
    """The first part of an ingest (one rank): open and check the source, create the destination in a
    hidden folder beside `dest`, and copy it all when only one process can read the source (PNG/JPEG,
    builtins). Returns the plan, plain JSON, that ingest_part and finish_ingest take on every rank.

    A Zarr array with every channel in its chunks is not copied: the store links its chunk files and
    carries dist_int's attributes in its own metadata (re-chunking only when needed)."""
    dest = Path(dest)
    if dest.exists():
        raise SignalError(f"{dest} already exists; choose another destination or delete it first")
    data, name, sha, close, parallel, link = open_source(src, allow_large)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    plan = {"src": src, "dest": str(dest), "tmp": str(tmp), "chunk": chunk, "name": name, "sha": sha,
            "allow_large": allow_large, "mode": "link" if link else "copy", "parallel": parallel}
    try:
        h, w, channels = _check_image(src, data)
        dtype = np.dtype(data.dtype)
        _check_dtype(dtype)
        plan.update(shape=[h, w, channels], dtype=dtype.name)
        shutil.rmtree(tmp, ignore_errors=True)
        if link:
            tmp.mkdir(parents=True)
            meta = json.loads((link / "zarr.json").read_text())
            (tmp / "zarr.json").write_text(json.dumps(meta))
            for entry in link.iterdir():  # the chunk files, read in place through links
                if entry.name != "zarr.json":
                    (tmp / entry.name).symlink_to(entry.resolve())
            plan["chunk"] = int(data.arr.chunks[0])
        else:
            zarr.create_array(tmp, shape=(h, w, channels), chunks=(chunk, chunk, channels), dtype=dtype,
                              fill_value=0)
        if not parallel:  # decoded whole in this process: copy it now
            plan["range"] = ingest_part(plan, 0, 1, progress, data)
            plan["done"] = True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if close:
            close()
    return plan


def _check_dtype(dtype: np.dtype) -> None:
    if dtype == np.bool_ or np.issubdtype(dtype, np.floating):
        return
    if np.issubdtype(dtype, np.integer):
        if dtype.itemsize > 4:
            # (raw - lo) / (hi - lo) cannot be computed exactly in float64 for a 64-bit range (2^64 > 2^53).
            raise SignalError(f"{dtype} pixels: a 64-bit integer range cannot be normalized to [0, 1] "
                              f"without overflow or rounding; convert the image to 32-bit integers or float")
        return
    raise SignalError(f"unsupported pixel type {dtype}; use integer or floating-point images")


def ingest_part(plan: dict, rank: int, world_size: int, progress=None, data=None) -> list[float]:
    """This rank's share of the copy (bands of `chunk` rows, band i on rank i % world_size), checking
    float values for NaN/Inf; returns [min, max] of the float values it read ([inf, -inf] otherwise)."""
    close = None
    if data is None:
        data, _, _, close, _, _ = open_source(plan["src"], plan["allow_large"])
    lo, hi = np.inf, -np.inf
    try:
        h, w, channels = plan["shape"]
        rows = plan["chunk"]
        is_float = np.issubdtype(np.dtype(plan["dtype"]), np.floating)
        out = zarr.open_array(plan["tmp"], mode="r+") if plan["mode"] == "copy" else None
        if out is None and not is_float:
            return [lo, hi]  # linked integers: nothing to read
        bands = list(range(0, h, rows))
        for n, y in enumerate(bands[rank::world_size]):
            band = np.asarray(data[y:y + rows]).reshape(-1, w, channels)
            if is_float:
                if not np.isfinite(band).all():
                    raise SignalError(f"{plan['src']} contains NaN or Inf values (rows {y}..{y + len(band)}); "
                                      f"clean or mask them before ingesting")
                lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
            if out is not None:
                out[y:y + band.shape[0]] = band
            if progress:
                progress(min((n + 1) * world_size * rows, h), h)
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
    else:
        lo, hi = (value_min, value_max) if value_max > value_min else (value_min, value_min + 1.0)
    tmp, dest = Path(plan["tmp"]), Path(plan["dest"])
    try:
        arr = zarr.open_array(tmp, mode="r+")
        arr.attrs[ATTR] = {
            "kind": "image",
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


def ingest(src: str, dest: str | Path, chunk: int = 128, progress=None, allow_large: bool = False) -> Path:
    """Write `src` into a new Zarr store at `dest` in this process. Never overwrites: `dest` must not exist."""
    plan = begin_ingest(src, dest, chunk, allow_large, progress)
    try:
        lo, hi = plan["range"] if plan.get("done") else ingest_part(plan, 0, 1, progress)
    except BaseException:
        shutil.rmtree(plan["tmp"], ignore_errors=True)
        raise
    return finish_ingest(plan, lo, hi)
