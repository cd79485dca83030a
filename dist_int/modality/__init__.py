"""modality: what differs between signal kinds: reading a source, output, metrics, export. Picked from the
file (readers, modality/sources.py) and then from the store's metadata (the rest). Adding a kind means a
module here and a config; nothing in the trainer (docs/design.md, "Modalities")."""

from .base import Modality
from .kinds import MODALITIES, modality_for
from .sources import copy_part, finish_signal, ingest, open_source, plan_signal, resolve_chunk

__all__ = ["MODALITIES", "Modality", "copy_part", "finish_signal", "ingest", "modality_for", "open_source",
           "plan_signal", "resolve_chunk"]
