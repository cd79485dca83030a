"""signal: source files -> Zarr store -> each rank's shard of chunks."""

from pathlib import Path

from .errors import SignalError
from .ingest import BUILTINS, TIFF_SUFFIXES, file_sha256, ingest, load_source
from .store import Shard, SignalStore, assign_chunks
from .stream import StreamedShard, open_shard
from .targets import TargetRange


def is_zarr_store(path: str) -> bool:
    return (Path(path) / "zarr.json").is_file()


def signal_store_path(path: str, ingested: Path) -> Path:
    """Where the Zarr store to train on lies: `path` itself, or `ingested`, the run folder's copy."""
    return Path(path) if is_zarr_store(path) else ingested


def prepare_signal(path: str, ingested: Path, chunk: int, allow_large: bool = False) -> Path:
    """The Zarr store to train on: `path` itself when it is one, else `path` ingested into the run
    folder (once; a later run on the same folder checks that the source has not changed)."""
    if is_zarr_store(path):
        SignalStore(path)  # validate now, before any training starts
        return Path(path)
    dest = ingested
    if dest.exists():
        store = SignalStore(dest)
        if not path.startswith("builtin:"):
            if not Path(path).is_file():
                raise SignalError(f"signal file not found: {path}")
            if file_sha256(Path(path)) != store.meta.get("source_sha256"):
                raise SignalError(f"{path} changed since it was ingested into {dest}; use a new run.dir")
        return dest
    return ingest(path, dest, chunk, allow_large=allow_large)


__all__ = ["BUILTINS", "TIFF_SUFFIXES", "Shard", "SignalError", "StreamedShard", "open_shard", "SignalStore", "assign_chunks",
           "TargetRange", "ingest", "is_zarr_store", "load_source", "prepare_signal", "signal_store_path"]
