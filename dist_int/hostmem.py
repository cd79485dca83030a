"""Giving freed host memory back to the system (docs/design.md, "Memory stays within one budget").

glibc's malloc keeps freed memory inside its heaps, and a sweep over a long signal that keeps a few
small tensors (probe rows, per-group sums) between large temporaries pins the heap's top: the freed
temporaries below cannot be returned, and the process's RSS grows with the signal although what it holds
does not (measured: +137 MiB over a 17 M-point sweep that keeps 16 K points). `trim()` asks glibc to give
back every free page (malloc_trim), which costs well under a millisecond when little is free; sweeps call
it once per group of chunks. Elsewhere (another C library) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def trim() -> None:
    fn = _malloc_trim()
    if fn is not None:
        fn(0)


# ---- How much memory this job may use on this host -----------------------------------------------------
# A job's limit is rarely the machine's RAM: SLURM's --mem and containers put the job in a cgroup whose
# limit the kernel enforces with the OOM killer, and SLURM exports the same number. A budget taken from
# physical memory under such a limit gets the job killed where it should have streamed (docs/training.md,
# "Memory"). So the default budget starts from the smallest of the three.

def _mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """{"v1": (mount point, mount root), "v2": (...)} of the cgroup file systems holding the memory
    controller, from /proc/self/mountinfo."""
    out: dict[str, tuple[str, str]] = {}
    try:
        lines = open(mountinfo).read().splitlines()
    except OSError:
        return out
    for line in lines:
        head, _, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        if rest[0] == "cgroup2":
            out.setdefault("v2", (fields[4], fields[3]))
        elif rest[0] == "cgroup" and "memory" in rest[2].split(","):
            out.setdefault("v1", (fields[4], fields[3]))
    return out


def _read_limit(path: str) -> int | None:
    try:
        text = open(path).read().strip()
    except OSError:
        return None
    if not text or text == "max":
        return None
    value = int(text)
    return None if value >= 1 << 60 else value  # v1 writes "no limit" as a page-rounded 2^63 - 1


def cgroup_limit(proc_cgroup: str = "/proc/self/cgroup", mountinfo: str = "/proc/self/mountinfo") -> tuple[int, str] | None:
    """This process's cgroup memory limit in bytes and the file it was read from (the smallest over the
    cgroup and its ancestors: a parent's limit binds its children), or None when there is none."""
    mounts = _mounts(mountinfo)
    try:
        lines = open(proc_cgroup).read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and number == "0" and "v2" in mounts:
            (point, root), name = mounts["v2"], "memory.max"
        elif "memory" in controllers.split(",") and "v1" in mounts:
            (point, root), name = mounts["v1"], "memory.limit_in_bytes"
        else:
            continue
        rel = path[len(root):] if root != "/" and path.startswith(root) else path  # a container's own root
        parts = [p for p in rel.split("/") if p]
        for depth in range(len(parts), -1, -1):
            file = "/".join([point.rstrip("/"), *parts[:depth], name])
            limit = _read_limit(file)
            if limit is not None and (best is None or limit < best[0]):
                best = (limit, file)
    return best


def slurm_limit(env) -> tuple[int, str] | None:
    """SLURM's memory for this job on this node in bytes (--mem, or --mem-per-cpu times the node's CPUs)."""
    # 0 (--mem=0: all of the node's memory) is no limit
    if env.get("SLURM_MEM_PER_NODE", "").isdigit() and int(env["SLURM_MEM_PER_NODE"]) > 0:
        return int(env["SLURM_MEM_PER_NODE"]) << 20, "SLURM_MEM_PER_NODE"
    per_cpu = env.get("SLURM_MEM_PER_CPU", "")
    cpus = (env.get("SLURM_CPUS_ON_NODE") or "").split("(")[0]
    if per_cpu.isdigit() and cpus.isdigit() and int(per_cpu) * int(cpus) > 0:
        return (int(per_cpu) * int(cpus)) << 20, "SLURM_MEM_PER_CPU x SLURM_CPUS_ON_NODE"
    return None


def memory_limit(env=None) -> tuple[int, str]:
    """The memory this job may use on this host, in bytes, and where that number comes from: the
    smallest of physical memory, this process's cgroup limit and SLURM's memory for the job."""
    import os

    env = os.environ if env is None else env
    found = [(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "physical memory")]
    for limit in (cgroup_limit(), slurm_limit(env)):
        if limit is not None:
            found.append(limit)
    return min(found)
