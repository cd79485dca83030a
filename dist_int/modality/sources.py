"""Which reader opens a signal, and the ingest of one into a Zarr store (one process, or the plan the
trainer's ranks share). Readers live with their kinds (modality/*.py); the ingest itself knows no kind
(signal/ingest.py); this module joins them, so signal/ never imports modality/ (docs/design.md,
"Modalities")."""

from __future__ import annotations

import shutil

import numpy as np
from pathlib import Path

from ..errors import SignalError
from ..signal import SignalStore, is_zarr_store
from ..signal.ingest import begin_ingest, finish_ingest, ingest_part
from ..signal.source import Source, source_fingerprint
from .kinds import MODALITIES
from .image import open_array


def open_source(src: str, allow_large: bool = False, kind: str = "auto", options: dict | None = None) -> Source:
    """Open any supported source lazily and tell its kind: a file its kind's reader takes by suffix
    (audio, video, meshes), else an array (Zarr, TIFF, PNG/JPEG, builtins), an image or a volume by its
    axes. `kind` other than "auto" insists on one and explains a mismatch."""
    path = Path(src)
    lower = path.name.lower()
    reader = None if src.startswith("builtin:") else next(
        (m for m in MODALITIES.values() if m.suffixes and lower.endswith(m.suffixes)), None)
    if reader is not None:
        if not path.is_file():
            raise SignalError(f"signal file not found: {src}")
        source = reader.open(path, options or {})
    else:
        source = open_array(src, allow_large)
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
    modality = MODALITIES[kind]
    dims = modality.spatial_dims
    if chunk in (0, None):
        return modality.default_chunk
    if isinstance(chunk, int):
        return (chunk,) * dims
    if len(chunk) != dims:
        raise SignalError(f"signal.chunk = {list(chunk)} gives {len(chunk)} edges but this {kind} signal has "
                          f"{dims} {'axis' if dims == 1 else 'axes'}; give one edge, or {dims}")
    return tuple(int(c) for c in chunk)


def begin(src: str, dest: str | Path, chunk=0, allow_large: bool = False, progress=None, kind: str = "auto",
          options: dict | None = None) -> dict:
    """Open `src` and begin its ingest into `dest` (signal/ingest.py, begin_ingest)."""
    if Path(dest).exists():
        raise SignalError(f"{dest} already exists; choose another destination or delete it first")
    source = open_source(src, allow_large, kind, options)
    try:
        return begin_ingest(source, src, dest, resolve_chunk(chunk, source.kind), allow_large, progress, options)
    finally:
        if source.close:
            source.close()


def copy_part(plan: dict, rank: int, world_size: int, progress=None) -> list[float]:
    """This rank's share of an ingest begun by `begin`: it opens the source itself."""
    source = open_source(plan["src"], plan["allow_large"], plan["kind"], plan.get("options"))
    try:
        return ingest_part(plan, rank, world_size, source, progress)
    finally:
        if source.close:
            source.close()


def ingest(src: str, dest: str | Path, chunk=0, progress=None, allow_large: bool = False,
           kind: str = "auto") -> Path:
    """Write `src` into a new Zarr store at `dest` in this process. Never overwrites: `dest` must not exist."""
    plan = begin(src, dest, chunk, allow_large, progress, kind)
    try:
        lo, hi = plan["range"] if plan.get("done") else copy_part(plan, 0, 1, progress)
    except BaseException:
        shutil.rmtree(plan["tmp"], ignore_errors=True)
        raise
    return finish_signal(plan, lo, hi)


def finish_signal(plan: dict, lo: float, hi: float) -> Path:
    """signal/ingest.py's finish_ingest with the range the signal's kind normalizes by (Modality.natural_range:
    the data's own, or a physical scale)."""
    modality = MODALITIES[plan["kind"]]
    value_range = modality.natural_range(np.dtype(plan["dtype"]), lo, hi)
    plan = {**plan, "meta": {**plan.get("meta", {}), "table": modality.table}}
    return finish_ingest(plan, lo, hi, value_range)


def plan_signal(path: str, ingested: Path, chunk, allow_large: bool = False, kind: str = "auto",
                options: dict | None = None) -> dict | None:
    """On one rank: the ingest still to do for the run (None: nothing), or an error. An ingested store is
    used as it is; any other source is ingested once into the run folder (`ingested`), and a later run
    on the same folder checks that the source has not changed. TIFF and Zarr sources are then copied by
    every rank (copy_part), PNG/JPEG already here."""
    if is_zarr_store(path):
        SignalStore(path)  # validate now, before any training starts
        return None
    if ingested.exists():
        store = SignalStore(ingested)
        if path.startswith("builtin:") and store.meta.get("source") != path:
            raise SignalError(f"{ingested} holds {store.meta.get('source')}, not {path}: a run folder keeps the "
                              f"signal it started with; use a new run.dir for another signal")
        if not path.startswith("builtin:"):
            if not Path(path).exists():
                raise SignalError(f"signal file not found: {path}")
            if source_fingerprint(path) != store.meta.get("source_sha256"):
                raise SignalError(f"{path} changed since it was ingested into {ingested}; use a new run.dir")
        return None
    return begin(path, ingested, chunk, allow_large, kind=kind, options=options)
