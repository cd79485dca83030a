"""signal: source files -> Zarr store -> each rank's shard of chunks."""

import json
from pathlib import Path

from .errors import SignalError
from .ingest import (ATTR, BUILTINS, TIFF_SUFFIXES, begin_ingest, file_sha256, finish_ingest, ingest, ingest_part,
                     load_source, open_source, source_fingerprint)
from .store import Shard, SignalStore, assign_chunks, signal_geometry
from .stream import StreamedShard, open_shard
from .targets import TargetRange


def is_zarr_store(path: str) -> bool:
    """Whether `path` is a store dist_int ingested (a Zarr v3 array carrying its attributes)."""
    meta = Path(path) / "zarr.json"
    try:
        return meta.is_file() and ATTR in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def signal_store_path(path: str, ingested: Path) -> Path:
    """Where the Zarr store to train on lies: `path` itself, or `ingested`, the run folder's copy."""
    return Path(path) if is_zarr_store(path) else ingested


def plan_signal(path: str, ingested: Path, chunk, allow_large: bool = False, kind: str = "auto",
                options: dict | None = None) -> dict | None:
    """On one rank: the ingest still to do for the run (None: nothing), or an error. An ingested store is
    used as it is; any other source is ingested once into the run folder (`ingested`), and a later run
    on the same folder checks that the source has not changed. TIFF and Zarr sources are then copied by
    every rank (ingest_part), PNG/JPEG already here."""
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
    return begin_ingest(path, ingested, chunk, allow_large, kind=kind, options=options)


__all__ = ["BUILTINS", "TIFF_SUFFIXES", "Shard", "SignalError", "SignalStore", "StreamedShard", "TargetRange",
           "assign_chunks", "begin_ingest", "file_sha256", "finish_ingest", "ingest", "ingest_part",
           "is_zarr_store", "load_source", "open_shard", "open_source", "plan_signal", "signal_geometry", "signal_store_path"]
