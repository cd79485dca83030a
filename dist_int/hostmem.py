"""Giving freed host memory back to the system (docs/design.md, "Memory stays within one budget").

glibc's malloc keeps freed memory inside its heaps, and a sweep over a long signal that keeps a few
small tensors (probe rows, per-group sums) between large temporaries pins the heap's top: the freed
temporaries below cannot be returned, and the process's RSS grows with the signal although what it holds
does not (measured: +137 MiB over a 17 M-point sweep that keeps 16 K points). `trim()` asks glibc to give
back every free page (malloc_trim), which costs well under a millisecond when little is free; sweeps call
it once per group of chunks. Elsewhere (another C library) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def trim() -> None:
    fn = _malloc_trim()
    if fn is not None:
        fn(0)
