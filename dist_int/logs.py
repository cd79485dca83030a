"""The run's log: records go through the `logging` module (the "dist_int" logger), and one handler writes
them to stdout, with the rank in front when the job has several ranks (as torchtitan and lingua do) and
above the progress bar when there is one (progress.py). Warnings read "warning: ...".

Lines a user's scripts read stay plain prints: the progress lines (progress.py), the final result line,
and the one `error:` line of a failure (cli.py, engine/agree.py).
"""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("dist_int")


class _Format(logging.Formatter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return self.prefix + text


class _Handler(logging.Handler):
    """Writes a record as one line on stdout, or through the progress bar's own writer while it shows."""

    def __init__(self):
        super().__init__()
        self.bar = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if self.bar is not None:
                self.bar.write(text)
            else:
                print(text, flush=True)
        except Exception:
            self.handleError(record)


_HANDLER = _Handler()
_HANDLER.setFormatter(_Format(""))
LOGGER.addHandler(_HANDLER)
LOGGER.setLevel(logging.INFO)
LOGGER.propagate = False


def set_rank(rank: int, world_size: int) -> None:
    """From here on, records carry this rank ("[rank 1] ...") when the job has more than one."""
    _HANDLER.setFormatter(_Format(f"[rank {rank}] " if world_size > 1 else ""))


def show_above(bar) -> None:
    """Write records above this progress bar (None: plain lines)."""
    _HANDLER.bar = bar
