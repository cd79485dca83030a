from .infer import Predict, forward_chunks
from .siren import Siren

__all__ = ["Predict", "Siren", "forward_chunks"]
