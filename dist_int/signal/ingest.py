"""Source -> Zarr v3 store: one array (*spatial, C), chunked, with the data's range in its attributes.

The ingest takes an opened `Source` (signal/source.py; the readers live with their kinds in
dist_int/modality/) and copies it slab by slab, so a gigapixel TIFF never sits whole in memory. It runs in
three parts: `begin_ingest` on one rank (create the store; copy it all when only one process can read the
source), `ingest_part` on every rank (its share of the slabs, and the min and max of what it read),
`finish_ingest` on one rank (the data's range, agreed over all ranks, and the store moved into place).
The store keeps the source dtype (lossless, small); readers of the store normalize by the range
(docs/design.md, "Values are the data's").
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from .errors import SignalError
from .source import ATTR, Source


def begin_ingest(source: Source, src: str, dest: str | Path, chunk: tuple[int, ...], allow_large: bool = False,
                 progress=None, options: dict | None = None) -> dict:
    """The first part of an ingest (one rank): check the opened `source`, create the destination in a
    hidden folder beside `dest` with chunks of `chunk` edges (cut to the signal), and copy it all when only
    one process can read the source (PNG/JPEG, builtins, video, meshes). Returns the plan, plain JSON, that
    ingest_part and finish_ingest take on every rank (each rank opens `src` again).

    A Zarr array with every channel in its chunks is not copied: the store links its chunk files and
    carries dist_int's attributes in its own metadata."""
    dest = Path(dest)
    if dest.exists():
        raise SignalError(f"{dest} already exists; choose another destination or delete it first")
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    plan = {"src": src, "dest": str(dest), "tmp": str(tmp), "name": source.name, "sha": source.fingerprint,
            "allow_large": allow_large, "mode": "link" if source.link else "copy", "parallel": source.parallel,
            "kind": source.kind, "meta": source.meta, "options": options or {}}
    try:
        _check_dtype(source.dtype)
        spatial = source.shape[:-1]
        # A chunk never exceeds the signal: a huge signal.chunk on a small signal costs nothing.
        edges = tuple(min(e, n) for e, n in zip(chunk, spatial))
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
            plan["range"] = ingest_part(plan, 0, 1, source, progress)
            plan["done"] = True
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


def ingest_part(plan: dict, rank: int, world_size: int, source: Source, progress=None) -> list[float]:
    """This rank's share of the copy (slabs of one chunk along the first axis, slab i on rank
    i % world_size), checking float values for NaN/Inf; returns [min, max] of the values it read
    ([inf, -inf] when it read none). A linked store is only read, for its range."""
    lo, hi = np.inf, -np.inf
    n0, rows = plan["shape"][0], plan["chunk"][0]
    is_float = np.issubdtype(np.dtype(plan["dtype"]), np.floating)
    out = zarr.open_array(plan["tmp"], mode="r+") if plan["mode"] == "copy" else None
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
    return [lo, hi]


def dtype_range(dtype: np.dtype) -> list[float] | None:
    """The full range of an integer (or bool) dtype; None for floats, which have none to speak of."""
    if dtype == np.bool_:
        return [0.0, 1.0]
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return [float(info.min), float(info.max)]
    return None


def data_range(dtype: np.dtype, data_min: float, data_max: float) -> list[float]:
    """The range a signal is normalized by unless its kind keeps a physical scale (Modality.natural_range)
    or the config says otherwise: the data's own min and max (a 12-bit CT scan in int16 or a dim photo is
    not squeezed into a sliver of [0, 1])."""
    if not data_max > data_min:  # a constant signal: any unit span keeps it representable
        return [data_min, data_min + 1.0]
    return [data_min, data_max]


def finish_ingest(plan: dict, data_min: float, data_max: float, value_range: list[float] | None = None) -> Path:
    """The last part (one rank, after every rank's ingest_part): the data's range (min and max over all
    ranks), the attributes, and the store moved into place. value_range: what reads normalize by (the
    kind's, modality/sources.py, finish_signal); None: the data's own range."""
    dtype = np.dtype(plan["dtype"])
    tmp, dest = Path(plan["tmp"]), Path(plan["dest"])
    try:
        arr = zarr.open_array(tmp, mode="r+")
        arr.attrs[ATTR] = {
            **plan.get("meta", {}),
            "kind": plan["kind"],
            "source": plan["name"],
            "source_sha256": plan["sha"],
            "source_dtype": dtype.name,
            # The data's exact range (found by every rank over its share, agreed at ingest), the dtype's,
            # and the one reads normalize by unless signal.value_range asks for another.
            "data_range": [float(data_min), float(data_max)],
            "dtype_range": dtype_range(dtype),
            "value_range": value_range or data_range(dtype, data_min, data_max),
            "normalization": "(raw - value_range[0]) / (value_range[1] - value_range[0])",
            "linked": plan["src"] if plan["mode"] == "link" else None,
        }
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left behind when something failed
    return dest
