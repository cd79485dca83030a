"""Work that every rank does (or one rank does while the others wait), with one outcome on every rank:
when any rank fails, every rank knows who failed and why (docs/design.md, "Long work and the collective
timeout"). `everywhere` makes every rank raise; `attempt` makes every rank carry on with the failure as a
message, for work whose failure must not lose a finished training (docs/design.md, "A finished training
is never lost")."""

from __future__ import annotations

import sys

from ..comm import Comm
from ..errors import PeerFailed, error_line, user_error


def agree_on_failure(comm: Comm, error: Exception | None, what: str, long: bool = False) -> None:
    """Every rank fails together when any rank failed, and every rank says why: the first failing rank
    raises its own error, the others PeerFailed with its message. `long`: the step just done may take one
    rank much longer than the others (no collective timeout while they wait; comm.py).

    With several ranks, the first failing rank prints its one `error:` line here, and every rank waits for
    that before it raises: a launcher that stops the other workers as soon as one exits (torchrun does)
    would otherwise stop the rank that was to print, and the user would see no reason at all. The raised
    errors are marked `reported`, so the command line does not print them again (cli.py)."""
    messages = comm.gather_strings("" if error is None else (str(error) or type(error).__name__), long)
    failed = [r for r, m in enumerate(messages) if m]
    if not failed:
        return
    first = failed[0]
    mine = error is not None and comm.rank == first
    if comm.world_size > 1:
        if mine:
            line = error_line(error) if user_error(error) is not None else \
                f"error: rank {first} failed to {what}: {messages[first]}"
            print(line, file=sys.stderr, flush=True)
        comm.barrier(long=True)  # the line is out before any rank goes on to exit
    if mine:
        if comm.world_size > 1 and user_error(error) is not None:
            error.reported = True
        raise error
    peer = PeerFailed(f"rank {first} failed to {what}: {messages[first]}")
    peer.reported = comm.world_size > 1
    raise peer


def everywhere(comm: Comm, what: str, work, rank_zero_only: bool = False):
    """Run `work` on every rank (or on rank 0 only) and wait for all without the dead-rank timeout (the
    work may be long; comm.py); every rank fails together and says why. Returns work()'s result."""
    result, error = None, None
    if comm.is_rank_zero or not rank_zero_only:
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
    agree_on_failure(comm, error, what, long=True)
    return result


def attempt(comm: Comm, what: str, work, rank_zero_only: bool = False) -> tuple[object, str | None]:
    """Like `everywhere`, but a failure does not raise: every rank gets (None, "<what> failed on rank R:
    <its message>"), the same on every rank; on success (work()'s result, None)."""
    result, error = None, None
    if comm.is_rank_zero or not rank_zero_only:
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - becomes the run's warning, on every rank
            error = e
    messages = comm.gather_strings("" if error is None else (str(error) or type(error).__name__), long=True)
    failed = [r for r, m in enumerate(messages) if m]
    if not failed:
        return result, None
    where = f" on rank {failed[0]}" if comm.world_size > 1 else ""
    return None, f"{what} failed{where}: {messages[failed[0]]}"
