from ..errors import SignalError

__all__ = ["SignalError"]
