"""The one place that decides how this process was launched: torchrun, plain srun, or a single process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..comm import Comm, DistComm
from ..errors import ConfigError


@dataclass
class Launch:
    rank: int
    local_rank: int
    world_size: int
    how: str  # "torchrun", "srun" or "single"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detect_launch(env=None) -> Launch:
    """Read (and where needed fill in) RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT of `env`
    (the process environment)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        how = "torchrun"
    elif "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        # Plain `srun` with one task per GPU sets no RANK for DeepSpeed (docs/cluster.md): derive it.
        how = "srun"
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        if "MASTER_ADDR" not in env:
            nodes = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                                   capture_output=True, text=True, check=True).stdout.split()
            env["MASTER_ADDR"] = nodes[0]
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    else:
        how = "single"
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    return Launch(int(env["RANK"]), int(env.get("LOCAL_RANK", "0")), int(env["WORLD_SIZE"]), how)


def check_host_address(env=None, resolve=socket.gethostbyname, hostname=socket.gethostname) -> None:
    """Refuse, with the fix, a job on several hosts whose ranks would tell the others a loopback address.

    gloo (and NCCL's bootstrap) publish the address this host's name resolves to, unless GLOO_SOCKET_IFNAME
    (NCCL_SOCKET_IFNAME) names an interface. Many machines map their own name to 127.0.1.1 in /etc/hosts;
    the other hosts then connect to themselves and every rank waits until the collective times out. Across
    hosts (WORLD_SIZE beyond the ranks on this host) with no interface set, a name that resolves to a
    loopback address is an error naming both variables (docs/cluster.md, "Interfaces")."""
    env = os.environ if env is None else env
    world, local = int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", "1")))
    if world <= local or env.get("GLOO_SOCKET_IFNAME"):
        return
    name = hostname()
    try:
        addr = resolve(name)
    except OSError as e:
        raise ConfigError(f"this host's name {name!r} does not resolve ({e}); the other hosts could not reach "
                          f"its ranks. Fix name resolution, or set GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME "
                          f"on GPUs) to the interface the hosts share, e.g. GLOO_SOCKET_IFNAME=eth0") from None
    if addr.startswith("127."):
        raise ConfigError(f"this host's name {name!r} resolves to {addr}, a loopback address: the other hosts "
                          f"would connect to themselves and wait until the collective timeout. Set "
                          f"GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME on GPUs) to the interface the hosts "
                          f"share, e.g. GLOO_SOCKET_IFNAME=eth0, or map the name to that interface's address")


def die_with_launcher(launch: Launch) -> None:
    """A worker of torchrun or srun ends as soon as its launcher does (docs/design.md, "A finished training
    is never lost"): the kernel sends it SIGKILL when its parent exits (prctl PR_SET_PDEATHSIG), so an
    orphan never trains on or writes the run folder after its job is gone. Everything it writes goes to
    temporary names first, so the folder it leaves behind resumes. A single process started by hand keeps
    running when its shell goes (nohup)."""
    if launch.how == "single" or not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before the request was in place
        os._exit(1)


def device_index(local_rank: int, visible: int, env=None) -> int:
    """The GPU this process uses, among the `visible` ones, and LOCAL_RANK made to name it.

    torchrun (one process per GPU, every GPU visible): the local rank. Plain srun with one task per GPU
    (each task sees only its own GPU, as index 0, while SLURM_LOCALID counts the tasks on the node):
    local rank modulo the visible count, 0. DeepSpeed reads LOCAL_RANK itself, for `set_device` and for
    the device it gives the process group, so LOCAL_RANK is rewritten to the index picked here; otherwise
    every task with SLURM_LOCALID >= 1 fails with "invalid device ordinal" (docs/cluster.md)."""
    index = local_rank % max(visible, 1)
    (os.environ if env is None else env)["LOCAL_RANK"] = str(index)
    return index


def pick_device(launch: Launch) -> torch.device:
    if torch.cuda.is_available():
        index = device_index(launch.local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # explicit, and it silences DeepSpeed's guess
    return torch.device("cpu")


def init_distributed(launch: Launch, device: torch.device, timeout_s: float) -> Comm:
    """Start the process group (NCCL on GPU, gloo on CPU) through DeepSpeed; return our collectives."""
    import deepspeed

    check_host_address()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type != "cuda":
        _skip_shm_build()
    init_method = None  # env://: MASTER_ADDR and MASTER_PORT, as torchrun and srun set them
    if launch.how == "single":
        # One process needs no port: a file rendezvous cannot collide with another run that picked the
        # same free port between our pick and our bind (seen as EADDRINUSE with several runs at once).
        fd, path = tempfile.mkstemp(prefix="dist_int-rdzv-")
        os.close(fd)
        os.unlink(path)
        init_method = f"file://{path}"
    deepspeed.init_distributed(dist_backend=backend, timeout=timedelta(seconds=timeout_s), verbose=False,
                               init_method=init_method, rank=launch.rank, world_size=launch.world_size)
    if launch.world_size == 1:
        return Comm()
    return DistComm(launch.rank, launch.world_size, device, timeout_s)


def _skip_shm_build() -> None:
    """On CPUs DeepSpeed builds a shared-memory communication op with g++ at its first start (a minute on
    2 cores) that only its inference all-reduce uses; we reduce through torch.distributed (gloo). A start
    killed during that build leaves a lock in the extensions cache on which every later start waits
    forever, without a word. So the op is marked not buildable here: no JIT build, no lock to wait on."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None:
        deepspeed.ops.__compatible_ops__[builder.NAME] = False


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
