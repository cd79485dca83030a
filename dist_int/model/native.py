"""The hash encoding's fused CPU kernel (hash_encode.c): built on first use, loaded with ctypes.

Why a C kernel with no torch headers (docs/fields.md, "A native kernel for scoring"): it builds in a few
seconds with the system's C compiler and needs nothing else (a torch C++ extension takes minutes and
ninja); it is called on contiguous tensors' memory. Its results are the torch path's bit for bit, so using
it or not never changes a teaching set: when no compiler is found, or DIST_INT_NATIVE=0, the encoding runs
the torch ops instead, and says why once (`status()`).

The library is cached per user, keyed by a digest of the source and the compiler command, and written
under a private name then renamed into place: ranks that start together on one host (or hosts sharing a
home folder) may all build it; none ever loads a half-written file. Portable flags (no -march=native), so
one cached build serves every node of a cluster that shares the cache.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("hash_encode.c")
# -ffp-contract=off: no fused multiply-adds, whose single rounding would differ from torch's mul then add.
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared"]
MAX_FEATURES = 8  # hash_encode.c's MAXF

_lib: ctypes.CDLL | None = None
_why_not: str | None = None  # set once the kernel is known to be unavailable


def cache_dir() -> Path:
    """DIST_INT_CACHE, else $XDG_CACHE_HOME/dist_int, else ~/.cache/dist_int."""
    if os.environ.get("DIST_INT_CACHE"):
        return Path(os.environ["DIST_INT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dist_int"


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise OSError(f"no C compiler ({cc!r} is not on PATH; set CC or install gcc)")
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([cc, *FLAGS]).encode()).hexdigest()[:16]
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / f"dist_int-{os.getuid()}"
        folder.mkdir(parents=True, exist_ok=True)
    lib = folder / f"hash_encode-{digest}.so"
    if not lib.is_file():
        tmp = folder / f".{lib.name}.{os.getpid()}.tmp"
        try:
            done = subprocess.run([cc, *FLAGS, "-o", str(tmp), str(SOURCE), "-lpthread"], capture_output=True,
                                  text=True, timeout=300)
            if done.returncode != 0:
                errors = [line for line in done.stderr.splitlines() if "error" in line] or [done.stderr.strip()]
                raise OSError(f"{cc} could not build {SOURCE.name}: {errors[0][:300]}")
            os.replace(tmp, lib)
        finally:
            tmp.unlink(missing_ok=True)
    handle = ctypes.CDLL(str(lib))
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    handle.hash_encode.argtypes = [p, i32, i64, i32, i32, i32, i32, p, p, p, p, p, i64, p, i32]
    handle.hash_encode.restype = i32
    return handle


def library() -> ctypes.CDLL | None:
    """The loaded kernel, built if needed; None when it is unavailable (status() says why)."""
    global _lib, _why_not
    if _lib is not None or _why_not is not None:
        return _lib
    if os.environ.get("DIST_INT_NATIVE", "1") == "0":
        _why_not = "DIST_INT_NATIVE=0"
        return None
    try:
        _lib = _build()
    except (OSError, subprocess.SubprocessError) as e:
        _why_not = str(e)
    return _lib


def status() -> str:
    """One line for the run's log: which path the CPU's no-grad hash encoding takes."""
    return "native kernel" if library() is not None else f"torch ops ({_why_not})"


def reset() -> None:
    """Forget the loaded kernel or the reason it was unavailable (tests switch DIST_INT_NATIVE)."""
    global _lib, _why_not
    _lib, _why_not = None, None


def hash_encode(coords: torch.Tensor, cells: torch.Tensor, mult: torch.Tensor, mask: torch.Tensor,
                offset: torch.Tensor, num_dense: int, table: torch.Tensor) -> torch.Tensor | None:
    """The encoding of fp32 or float64 `coords` (n, D) with HashEncoding's buffers (cells (D, L) float64,
    mult (D, L), mask (L,), offset (L,) int32) and its (F, rows) fp32 table: (n, L * F) fp32, or None when
    the kernel is unavailable. Every tensor must be on the CPU."""
    lib = library()
    if lib is None:
        return None
    coords, cells, mult = coords.contiguous(), cells.contiguous(), mult.contiguous()
    mask, offset, table = mask.contiguous(), offset.contiguous(), table.contiguous()
    dims, levels = cells.shape
    features, rows = table.shape
    out = torch.empty(coords.shape[0], levels * features, dtype=torch.float32)
    wide = int(coords.dtype == torch.float64)
    code = lib.hash_encode(coords.data_ptr(), wide, coords.shape[0], dims, levels, features, num_dense,
                           cells.data_ptr(), mult.data_ptr(), mask.data_ptr(), offset.data_ptr(), table.data_ptr(), rows,
                           out.data_ptr(), torch.get_num_threads())
    if code != 0:
        raise ValueError(f"hash_encode refused {dims} axes and {features} features (1-4 axes, 1-{MAX_FEATURES} "
                         "features)")
    return out
