class PeerFailed(RuntimeError):
    """Another rank failed during setup and reported the reason itself; this rank stops too."""
