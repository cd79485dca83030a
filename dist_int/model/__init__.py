from .infer import Predict, forward_rows
from .siren import Siren

__all__ = ["Predict", "Siren", "forward_rows"]
