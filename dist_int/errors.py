"""User-facing errors. Everything a user can cause (a bad config, file, store, run folder or checkpoint)
raises a subclass of `DistIntError`; the command line prints its message as one `error:` line and exits
with code 2. Anything else is a bug and keeps its traceback."""


class DistIntError(Exception):
    """Base of every error whose message tells the user what was wrong and what to do."""


class ConfigError(DistIntError, ValueError):
    """A config file or override the user wrote is wrong; the message says what to change."""


class SignalError(DistIntError, ValueError):
    """A signal file or store the user pointed at cannot be used; the message says why and what to do."""


class RunDirError(DistIntError, ValueError):
    """The run folder cannot be used as asked; the message says why and what to do."""


class CheckpointError(DistIntError, RuntimeError):
    """A checkpoint in the run folder cannot be loaded; the message names it and what to do."""


class InstallError(DistIntError, RuntimeError):
    """An installed package cannot do what the run needs; the message names it and the fix."""


class PeerFailed(DistIntError, RuntimeError):
    """Another rank failed and reported the reason itself; this rank stops too."""


def user_error(e: BaseException) -> DistIntError | None:
    """The user-facing form of an error, or None for a bug (which keeps its traceback): a DistIntError as
    it is; an operating-system error (permissions, a full disk, a read-only mount, a path under a file) as
    the one line users get for everything they can cause."""
    if isinstance(e, DistIntError):
        return e
    if isinstance(e, OSError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return DistIntError(f"{e.strerror or e}{where}: check that the path exists, is writable and that the "
                            f"disk has room, then run the same command again")
    return None


def error_line(e: BaseException) -> str:
    return f"error: {user_error(e) or e}"
