"""Shared helpers: real multi-process runs on loopback (no mocks), tiny signals made on the fly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

# Without a GPU, Triton kernels run under Triton's interpreter on CPU tensors (tests/test_triton.py). Triton
# reads the variable when it is imported and when it decorates a kernel, so it is set before anything
# imports it (DeepSpeed may); training subprocesses inherit it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, fn, args, errors):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
                      OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo", verbose=False)
        fn(rank, world_size, *args)
    except BaseException:
        errors.put((rank, traceback.format_exc()))
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Done and shut down cleanly: leave without C++ static destructors, where a gloo thread still joinable
    # at interpreter exit sometimes aborts the process ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_distributed(fn, world_size: int = 2, args: tuple = ()) -> None:
    """Run fn(rank, world_size, *args) in `world_size` real processes over gloo (OLMo-core's pattern).
    fn must be importable (module level); results come back through files in a tmp folder."""
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, errors))
             for r in range(world_size)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=300)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    if not errors.empty():
        rank, tb = errors.get()
        raise AssertionError(f"rank {rank} failed:\n{tb}")
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


def train_cmd(args: list[str], nproc: int = 0) -> list[str]:
    """launch/train.py through torchrun (nproc > 0) or as a single process (nproc = 0)."""
    script = [str(ROOT / "launch" / "train.py"), *args]
    if nproc:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_port", str(free_port()), *script]
    return [sys.executable, *script]


def train_env(**extra: str) -> dict:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", **extra}


def run_train(args: list[str], nproc: int = 0, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(args, nproc), env=train_env(**env), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def smooth_image(h: int = 64, w: int = 64, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth test image (a few low-frequency waves) as uint8, easy enough to fit in a few steps."""
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(channels):
        fy, fx, ph = rng.uniform(0.5, 2.5, 3)
        out.append(0.5 + 0.4 * np.sin(2 * np.pi * (fy * y + fx * x) + 3 * ph) * np.cos(2 * np.pi * fx * x))
    return (np.stack(out, -1) * 255).round().astype(np.uint8)


@pytest.fixture
def png_image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "img.png"
    Image.fromarray(smooth_image()).save(path)
    return path


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


class PointTable:
    """Points held as explicit tensors (coordinates, targets, global ids): the interface of
    dist_int.signal.Shard that the teacher uses, for small hand-made point sets."""

    def __init__(self, coords, targets, gids):
        self._coords, self._targets, self._gids = coords, targets, gids
        self.device = coords.device

    @property
    def num_points(self) -> int:
        return int(self._gids.numel())

    def coords(self, rows=None):
        return self._coords if rows is None else self._coords[rows]

    def targets(self, rows=None):
        return self._targets if rows is None else self._targets[rows]

    def gids(self, rows=None):
        return self._gids if rows is None else self._gids[rows]


# A run of a few seconds: the demo config with a tiny field, for tests of what surrounds training.
QUICK = ["--config", "configs/demo.toml", "model.hidden=16", "model.layers=2", "train.steps=20", "signal.chunk=32",
         "train.log_every=10", "train.eval_every=0"]


def quick_train(*args: str) -> subprocess.CompletedProcess:
    return run_train([*QUICK, *args])


def failed_clearly(proc, message: str) -> bool:
    """One clear error: exit 2, the message, no traceback."""
    return proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def png(tmp_path_factory) -> Path:
    """A small smooth 48x40 RGB PNG shared by a module's tests."""
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(smooth_image(48, 40)).save(path)
    return path
