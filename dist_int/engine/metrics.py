"""metrics.jsonl (rank 0 writes it) and the throughput meter."""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import torch

from .. import jsonio
from ..rundir import atomic_write


def rounded(x: float, digits: int = 4):
    return round(x, digits) if math.isfinite(x) else None


def _peak_rss_mb() -> float:
    """This process's peak RSS. On Linux VmHWM of /proc/self/status: getrusage's ru_maxrss survives
    execve, so a run started by a large parent (a test or a benchmark that had just made a big signal)
    would report the parent's peak as its own."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def memory_peaks(device: torch.device) -> tuple[float, float | None]:
    """(peak host RSS of this process, peak GPU memory allocated by torch or None without a GPU), MiB."""
    rss_mb = _peak_rss_mb()
    gpu_mb = torch.cuda.max_memory_allocated(device) / (1 << 20) if device.type == "cuda" else None
    return round(rss_mb, 1), None if gpu_mb is None else round(gpu_mb, 1)


def memory_report(comm, device: torch.device) -> dict:
    """Every rank's peak host RSS and peak GPU memory so far, MiB, as lists by rank (a control collective)."""
    rss, gpu = memory_peaks(device)
    out = {"peak_rss_mb": [round(v, 1) for v in comm.all_gather_scalar(rss).tolist()]}
    gpus = comm.all_gather_scalar(-1.0 if gpu is None else gpu).tolist()
    out["peak_gpu_mb"] = None if gpu is None else [round(v, 1) for v in gpus]
    return out


class MetricsLog:
    """One JSON line per log step. Opening it drops every line past `resume_step` (the steps about to be
    trained again, or all lines of a run that crashed before its first checkpoint), so steps never repeat."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.file = None
        if not enabled:
            return
        if path.is_file():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)  # older files may hold a bare NaN: written strict again
                    if record["step"] <= resume_step:
                        keep.append(jsonio.dumps(record))
                except (ValueError, KeyError, TypeError):
                    continue
            atomic_write(path, "".join(line + "\n" for line in keep))
        self.file = open(path, "a")

    def write(self, entry: dict) -> None:
        if self.file is not None:
            self.file.write(jsonio.dumps(entry) + "\n")  # strict JSON: a NaN loss is null
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Throughput:
    """Training wall time and points per second. The device is synchronized only when a lap is read (at log,
    evaluation and checkpoint steps), never in between."""

    def __init__(self, device: torch.device):
        self.device = device
        self._mark = 0.0
        self._banked = 0.0  # seconds of the current lap before a pause
        self.points = 0
        self.elapsed = 0.0  # training seconds since the last `reset`

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        """(Re)start the clock, e.g. after evaluation or a checkpoint, which are not training time."""
        self._sync()
        self._mark = time.perf_counter()

    def pause(self) -> None:
        """Stop the clock without ending the lap (e.g. for a snapshot); `start` resumes it."""
        self._sync()
        self._banked += time.perf_counter() - self._mark

    def add(self, points: int) -> None:
        self.points += points

    def lap(self) -> float:
        """Seconds trained since `start` (added to `elapsed`); the clock stops until the next `start`."""
        self._sync()
        seconds = self._banked + time.perf_counter() - self._mark
        self._banked = 0.0
        self.elapsed += seconds
        return seconds

    def points_per_s(self) -> float:
        return self.points / max(self.elapsed, 1e-9)

    def reset(self) -> None:
        self.points, self.elapsed, self._banked = 0, 0.0, 0.0


class SectionTimer:
    """Time spent inside `with timer:` blocks (the teacher's share of a step). On a GPU the blocks are
    timed with CUDA events, so timing them adds no host-device synchronization; they are read at log
    steps, after the throughput meter has synchronized anyway."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._events: list = []
        self._seconds = 0.0

    def __enter__(self):
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._begin, end))
        else:
            self._seconds += time.perf_counter() - self._t0

    def read(self) -> float:
        """Seconds inside the blocks since the last read."""
        seconds = self._seconds + sum(b.elapsed_time(e) for b, e in self._events) / 1000.0
        self._events.clear()
        self._seconds = 0.0
        return seconds
