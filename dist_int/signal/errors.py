class SignalError(ValueError):
    """A signal file or store the user pointed at cannot be used; the message says why and what to do."""
