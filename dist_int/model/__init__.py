from .siren import Siren

__all__ = ["Siren"]
