"""A lost peer ends the process, in any phase of a run (docs/cluster.md, "Lost hosts").

A collective whose peer dies outright fails fast: its connection closes. A peer whose host drops off the
network (a cut link, a hung node) closes nothing, and gloo's receive can then wait on the silent TCP
connection far beyond train.timeout_s (measured on the two-host bed: a gradient all-reduce still waiting
minutes after the link of the other host went down, with a 15 s timeout). Long phases wait for one rank's
work on a group whose timeout is days (ingest, render, export; comm.py), so they would wait out a lost
host for days.

So liveness is judged by heartbeats, not by how long local work takes: a thread on every rank joins a
small all-reduce on its own gloo group (comm.py, `beat`) every BEAT_S seconds, whatever the main thread is
doing (staging a window, scoring, compiling, rendering, writing a TIFF). When no round completes for
train.timeout_s plus a grace, or a round fails because a peer's connection closed, the thread prints one
line naming the ranks on other hosts (which this rank cannot reach) and ends the process with exit code 1,
and its torchrun agent with it (the agent would otherwise retry a rendezvous store on the lost host for
minutes). Time this process did not run (stopped by SIGSTOP, a SLURM suspend, a laptop's sleep) is no
peer's silence: a gap between two of the thread's polls longer than PAUSE_S is not counted, and the
round is looked at again before any verdict. A single
process has no peers and no heartbeat. Everything the run writes goes to temporary names first, so the last
complete checkpoint resumes. Under SLURM the line also goes to the batch script, which requeues the job
(slurm/run-with-requeue.sh).
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
BEAT_S = 1.0    # seconds between heartbeat rounds
POLL_S = 0.1    # how often a round in flight is looked at
PAUSE_S = 1.0   # a gap this long between two polls (ten times their interval): this process was stopped


class Watchdog:
    def __init__(self, comm, timeout_s: float, hosts: list[str], grace_s: float = GRACE_S, on_lost=None):
        """hosts: every rank's host name, by rank (gathered once at start-up); on_lost: what to undo before
        the process ends for a lost peer (a run folder this start made and never trained in). Starts the
        heartbeat thread (none for a single process)."""
        self.comm, self.rank, self.hosts, self.on_lost = comm, comm.rank, hosts, on_lost
        self.limit, self.bound = timeout_s + grace_s, f"train.timeout_s + {grace_s:g} s"
        self.phase = "setting up"  # for the message: what this rank was doing ("at step 120", ...)
        self._closing = threading.Event()
        self._thread = None
        if comm.world_size > 1:
            self._thread = threading.Thread(target=self._beat, daemon=True, name="dist_int-heartbeat")
            self._thread.start()

    def close(self) -> None:
        """Stop beating, with every rank: this rank's next round says so, and every thread that sees it
        stops (no rank mistakes another's regular end for a loss). Waits at most the limit."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=self.limit)

    def _beat(self) -> None:
        while True:
            work, flag = self.comm.beat(going_on=not self._closing.is_set())
            silent, last = 0.0, time.monotonic()
            while not work.is_completed():
                time.sleep(POLL_S)
                now = time.monotonic()
                silent += now - last if now - last < PAUSE_S else POLL_S  # a pause of this process
                last = now
                if silent > self.limit and not work.is_completed():
                    self.lost(f"a heartbeat has waited {silent:.0f} s for the other ranks, more than {self.bound}")
            try:
                work.wait()
            except RuntimeError as e:
                if self._closing.is_set():
                    return  # the others have ended as this rank does
                self.lost(f"a heartbeat failed ({str(e).splitlines()[-1][:200]})")
            if flag.item() == 0:
                return  # a rank has ended: its main thread ends the job's collectives too
            self._closing.wait(BEAT_S)

    def reason(self, what: str) -> str:
        mine = self.hosts[self.rank] if self.rank < len(self.hosts) else socket.gethostname()
        others: dict[str, list[int]] = {}
        for r, h in enumerate(self.hosts):
            if h != mine:
                others.setdefault(h, []).append(r)
        lost = ", ".join(f"{h} (rank{'s' if len(rs) > 1 else ''} {', '.join(map(str, rs))})" for h, rs in others.items())
        where = f"lost contact with {lost}" if lost else "another rank on this host stopped answering"
        return (f"error: rank {self.rank} on {mine}: {self.phase}, {what}: {where}. Stopping; the last "
                f"complete checkpoint resumes (run the same command again once every host is back)")

    def lost(self, what: str) -> None:
        """End this process (and its torchrun agent) with the one-line reason: a peer is gone."""
        line = self.reason(what)
        print(line, file=sys.stderr, flush=True)
        tell_batch_script(line)
        if self.on_lost is not None:  # best effort, and bounded: a hung file system must not keep us alive
            undo = threading.Thread(target=self.on_lost, daemon=True)
            undo.start()
            undo.join(timeout=10.0)
        if os.environ.get("TORCHELASTIC_RUN_ID"):
            # torchrun's agent would go on talking to a rendezvous store on the lost host, a minute per
            # attempt: it goes too, so that no process of the job outlives the bound.
            os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)


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
    from ..errors import DistIntError

    text = str(error)  # a user-facing error may quote another rank's "Connection timed out" (NFS, a URL)
    return isinstance(error, RuntimeError) and not isinstance(error, DistIntError) and any(
        s in text for s in ("Timed out", "timed out", "Connection closed", "Connection reset", "connection reset"))
