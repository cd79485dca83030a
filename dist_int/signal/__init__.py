"""signal: Zarr store -> each rank's shard of chunks. Sources reach the store through signal/ingest.py,
opened by their kinds' readers (dist_int/modality/)."""

import json
from pathlib import Path

from .errors import SignalError
from .source import ATTR, Source, file_sha256, source_fingerprint
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


__all__ = ["ATTR", "Shard", "SignalError", "SignalStore", "Source", "StreamedShard", "TargetRange", "assign_chunks",
           "file_sha256", "is_zarr_store", "open_shard", "signal_geometry", "signal_store_path", "source_fingerprint"]
