"""modality: what differs between signal kinds (output, metrics, export), picked from the store's
metadata. Adding a kind means a module here, its reader in signal/ingest.py's dispatch and a config;
nothing in the trainer (docs/design.md, "Modalities")."""

from .audio import Audio
from .base import Modality
from .image import Image
from .shape import Shape
from .video import Video
from .volume import Volume

MODALITIES: dict[str, Modality] = {m.kind: m for m in (Image(), Audio(), Volume(), Video(), Shape())}


def modality_for(store) -> Modality:
    return MODALITIES[store.meta.get("kind", "image")]


__all__ = ["MODALITIES", "Modality", "modality_for"]
