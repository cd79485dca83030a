"""The kinds of signal, by name: what the store's `kind` attribute picks."""

from .audio import Audio
from .base import Modality
from .image import Image
from .shape import Shape
from .video import Video
from .volume import Volume

MODALITIES: dict[str, Modality] = {m.kind: m for m in (Image(), Audio(), Volume(), Video(), Shape())}


def modality_for(store) -> Modality:
    return MODALITIES[store.meta.get("kind", "image")]
