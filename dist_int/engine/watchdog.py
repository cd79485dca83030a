"""A step that never ends ends the process (docs/cluster.md, "Lost hosts").

A collective whose peer dies outright fails fast: its connection closes. A peer whose host drops off
the network (a cut link, a hung node) closes nothing, and gloo's receive can then wait on the silent
TCP connection far beyond train.timeout_s (measured on the two-host bed: a gradient all-reduce still
waiting minutes after the link of the other host went down, with a 15 s timeout). So the training step
runs under a watchdog: a thread that, when one step has taken longer than train.timeout_s plus a grace,
prints one line naming the step and the ranks on other hosts (which this rank cannot reach) and ends the
process with exit code 1, and its torchrun agent with it (the agent would otherwise retry a rendezvous
store on the lost host for minutes). No step waits legitimately that long: every rank's collectives in a step time
out after train.timeout_s, so a step that takes longer is one whose peer is gone. Everything the run
writes goes to temporary names first, so the last complete checkpoint resumes. Under SLURM the line also
goes to the batch script, which requeues the job (slurm/run-with-requeue.sh).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time

GRACE_S = 30.0  # beyond train.timeout_s: the collectives' own timeout gets the first chance


class Watchdog:
    def __init__(self, timeout_s: float, rank: int, hosts: list[str]):
        """hosts: every rank's host name, by rank (gathered once at start-up)."""
        self.limit = timeout_s + GRACE_S
        self.rank, self.hosts = rank, hosts
        self._started: float | None = None
        self._step = -1
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="dist_int-watchdog")
        self._thread.start()

    @contextlib.contextmanager
    def step(self, step: int):
        with self._lock:
            self._started, self._step = time.monotonic(), step
        try:
            yield
        finally:
            with self._lock:
                self._started = None

    def reason(self, what: str) -> str:
        mine = self.hosts[self.rank] if self.rank < len(self.hosts) else socket.gethostname()
        others: dict[str, list[int]] = {}
        for r, h in enumerate(self.hosts):
            if h != mine:
                others.setdefault(h, []).append(r)
        lost = ", ".join(f"{h} (rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))})" for h, rs in others.items())
        where = f"lost contact with {lost}" if lost else "another rank on this host stopped answering"
        return (f"error: rank {self.rank} on {mine}: at step {self._step}, {what}: {where}. Stopping; the last "
                f"complete checkpoint resumes (run the same command again once every host is back)")

    def lost(self, what: str) -> None:
        """End this process (and its torchrun agent) with the one-line reason: a peer is gone."""
        line = self.reason(what)
        print(line, file=sys.stderr, flush=True)
        tell_batch_script(line)
        if os.environ.get("TORCHELASTIC_RUN_ID"):
            # torchrun's agent would go on talking to a rendezvous store on the lost host, a minute per
            # attempt: it goes too, so that no process of the job outlives the bound.
            os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            with self._lock:
                started = self._started
            if started is not None and time.monotonic() - started > self.limit:
                self.lost(f"the step has waited {time.monotonic() - started:.0f} s in a collective, more than "
                          f"train.timeout_s + {GRACE_S:.0f} s")


def tell_batch_script(line: str) -> None:
    """Under SLURM, leave the reason where the job's batch script looks (slurm/run-with-requeue.sh sets
    DIST_INT_LOST_FILE and DIST_INT_BATCH_HOST): srun itself would wait for the lost host's task until the
    controller declares that node down (SlurmdTimeout, minutes), so the batch script requeues the job on
    this line instead. Only ranks on the batch script's host write it (a path on another host's disk would
    be read by no one)."""
    path = os.environ.get("DIST_INT_LOST_FILE")
    here = os.environ.get("SLURMD_NODENAME") or socket.gethostname()  # as the batch script names its host
    if not path or os.environ.get("DIST_INT_BATCH_HOST") != here:
        return

    def write():
        with contextlib.suppress(OSError):
            with open(path, "a") as f:
                f.write(line + "\n")

    # a hung file system must not keep this process alive: the line is a courtesy, the exit is not
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(timeout=5.0)


def peer_lost(error: BaseException) -> bool:
    """Whether a collective failed because a peer stopped answering (its timeout, or its connection
    closed), as gloo and NCCL word it."""
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("Timed out", "timed out", "Connection closed", "Connection reset", "connection reset"))
