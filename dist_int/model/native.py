"""The hash encoding's fused CPU kernel (hash_encode.c): built on first use, loaded with ctypes.

Why a C kernel with no torch headers (docs/fields.md, "A native kernel for scoring"): it builds in about
ten seconds with the system's C compiler and needs nothing else (a torch C++ extension takes minutes and
ninja); it is called on contiguous tensors' memory. Its results are the torch path's bit for bit, so using
it or not never changes a teaching set: when no compiler is found, the build fails, or DIST_INT_NATIVE=0,
the encoding runs the torch ops instead, and the run's log says why (`status()`).

The library is cached per user, keyed by a digest of the source, the compiler command, the machine's
architecture and its C library, and written under a fresh temporary name then renamed into place: ranks
that start together on one host (or hosts sharing a home folder) may all build it, and none ever loads a
half-written file. A cached file that does not load is built again once. Portable flags (no
-march=native), so one cached build serves every node of the same architecture.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import torch

from ..files import atomic_write

SOURCE = Path(__file__).with_name("hash_encode.c")
# -ffp-contract=off: no fused multiply-adds, whose single rounding would differ from torch's mul then add.
FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fPIC", "-shared"]
MAX_FEATURES = 8  # hash_encode.c's MAXF
# DIST_INT_NATIVE's spellings; anything else turns the kernel off (the torch ops compute the same values)
ON_WORDS, OFF_WORDS = ("", "1", "true", "yes", "on"), ("0", "false", "no", "off")

class BuildError(OSError):
    """The compiler ran and refused the source: building in another folder would not help."""


_lib: ctypes.CDLL | None = None
_why_not: str | None = None  # set once the kernel is known to be unavailable


def cache_dir() -> Path:
    """DIST_INT_CACHE, else $XDG_CACHE_HOME/dist_int, else ~/.cache/dist_int."""
    if os.environ.get("DIST_INT_CACHE"):
        return Path(os.environ["DIST_INT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dist_int"


def _private_tmp() -> Path:
    """A folder in the temporary directory that only this user can write (else None is trusted)."""
    folder = Path(tempfile.gettempdir()) / f"dist_int-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise OSError(f"{folder} is not a folder that only this user can write")
    return folder


class Unloadable(OSError):
    """A library built just now does not load: its folder cannot hold code to run (a noexec mount)."""


def _compile(cc: list[str], folder: Path, lib: Path) -> ctypes.CDLL:
    """Build the kernel into a fresh temporary file in `folder`, load it from there, then rename it into
    place. Loaded under its own unique name: the dynamic loader hands back an object already loaded under
    the same path (a damaged file found at `lib` first) instead of reading the new file."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{lib.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(name)
    try:
        done = subprocess.run([*cc, *FLAGS, "-o", str(tmp), str(SOURCE), "-lpthread"], capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            raise BuildError(f"{' '.join(cc)} could not build {SOURCE.name}: {' | '.join(lines)[:400]}")
        try:
            handle = _load(tmp)
        except OSError as e:
            raise Unloadable(f"a library built in {folder} does not load ({e})") from None
        os.replace(tmp, lib)
        return handle
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _load(lib: Path) -> ctypes.CDLL:
    handle = ctypes.CDLL(str(lib))
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
    if not hasattr(handle, "hash_encode"):  # a foreign or damaged file under our name: build it again
        raise OSError(f"{lib} has no hash_encode function")
    handle.hash_encode.argtypes = [p, i32, i64, i32, i32, i32, i32, p, p, p, p, p, i64, p, i32]
    handle.hash_encode.restype = i32
    return handle


def compiler() -> list[str]:
    """The C compiler's command: $CC (which may carry words, e.g. "ccache gcc"), else cc."""
    return shlex.split(os.environ.get("CC", "cc")) or ["cc"]


def library_name() -> str:
    """The cached file's name: a digest of the source, the compiler command, the architecture and libc."""
    key = [SOURCE.read_bytes(), " ".join([*compiler(), *FLAGS]).encode(), platform.machine().encode(),
           " ".join(platform.libc_ver()).encode()]
    digest = hashlib.sha256(b"\0".join(key)).hexdigest()[:16]
    return f"hash_encode-{platform.machine()}-{digest}.so"


def _build() -> ctypes.CDLL:
    cc = compiler()
    if shutil.which(cc[0]) is None:
        raise OSError(f"no C compiler ({cc[0]!r} is not on PATH; set CC or install gcc)")
    name = library_name()
    errors = []
    for where in (cache_dir, _private_tmp):  # the user's cache, else a private temporary folder
        try:
            folder = where()
            lib, mark = folder / name, folder / f"{name}.unusable"
            if mark.is_file():  # found before: this folder cannot run what is built in it
                errors.append(f"{mark.read_text().strip()} (remembered in {mark}; delete it to try again)")
                continue
            if lib.is_file():
                try:
                    return _load(lib)
                except OSError as e:  # a damaged or foreign file: build it again
                    errors.append(f"{lib} did not load ({e}); rebuilt")
            try:
                return _compile(cc, folder, lib)
            except Unloadable as e:
                # Remembered, so that later starts (and ranks) do not build it here again.
                with contextlib.suppress(OSError):
                    atomic_write(mark, f"{e}\n")
                errors.append(str(e))
        except BuildError:
            raise
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # RuntimeError: no home folder
            errors.append(str(e))
    raise OSError("; ".join(errors))


def library() -> ctypes.CDLL | None:
    """The loaded kernel, built if needed; None when it is unavailable (status() says why)."""
    global _lib, _why_not
    if _lib is not None or _why_not is not None:
        return _lib
    asked = os.environ.get("DIST_INT_NATIVE", "1")
    if asked.strip().lower() not in ON_WORDS:
        _why_not = f"DIST_INT_NATIVE={asked}" + ("" if asked.strip().lower() in OFF_WORDS else
                                                 " (understood as off; use 0/1, false/true, no/yes or off/on)")
        return None
    try:
        _lib = _build()
    except Exception as e:  # noqa: BLE001 - any failure leaves the torch ops, which compute the same values
        _why_not = str(e) or type(e).__name__
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
    # The C side trusts these: check them here rather than read memory as the wrong type.
    dims, levels = cells.shape
    if not (coords.dim() == 2 and coords.shape[1] == dims and coords.dtype in (torch.float32, torch.float64)
            and cells.dtype == torch.float64 and table.dtype == torch.float32 and table.dim() == 2
            and all(t.dtype == torch.int32 for t in (mult, mask, offset)) and mult.shape == cells.shape
            and mask.numel() == offset.numel() == levels
            and all(t.device.type == "cpu" for t in (coords, cells, mult, mask, offset, table))):
        raise ValueError("hash_encode takes (n, D) fp32/float64 CPU coordinates and HashEncoding's CPU buffers")
    coords, cells, mult = coords.contiguous(), cells.contiguous(), mult.contiguous()
    mask, offset, table = mask.contiguous(), offset.contiguous(), table.contiguous()
    features, rows = table.shape
    out = torch.empty(coords.shape[0], levels * features, dtype=torch.float32)
    wide = int(coords.dtype == torch.float64)
    code = lib.hash_encode(coords.data_ptr(), wide, coords.shape[0], dims, levels, features, num_dense,
                           cells.data_ptr(), mult.data_ptr(), mask.data_ptr(), offset.data_ptr(),
                           table.data_ptr(), rows, out.data_ptr(), torch.get_num_threads())
    if code != 0:
        raise ValueError(f"hash_encode refused {dims} axes and {features} features (1-4 axes, 1-{MAX_FEATURES} "
                         "features)")
    return out
