"""Checkpoints as `checkpoints/step-N/` folders: DeepSpeed's files, one teacher-state file per rank, and
`meta.json`; `checkpoints/latest` names the newest complete one and is replaced atomically last, so a job
killed mid-save still resumes from the previous checkpoint. The latest `keep` folders are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..comm import Comm
from ..rundir import atomic_write

LATEST = "latest"


def tag_of(step: int) -> str:
    return f"step-{step:08d}"


def latest_tag(root: Path) -> str | None:
    f = root / LATEST
    if not f.is_file():
        return None
    tag = f.read_text().strip()
    return tag if (root / tag / "meta.json").is_file() else None


def save(engine, root: Path, step: int, meta: dict, rank_state: dict, comm: Comm, keep: int) -> Path:
    """Called on every rank at the same step."""
    tag = tag_of(step)
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    folder = root / tag
    tmp = folder / f".rank{comm.rank:05d}.pt.tmp"
    torch.save(rank_state, tmp)
    os.replace(tmp, folder / f"rank{comm.rank:05d}.pt")
    comm.barrier()
    if comm.is_rank_zero:
        atomic_write(folder / "meta.json", json.dumps({**meta, "world_size": comm.world_size}, indent=1))
        atomic_write(root / LATEST, tag)
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
            if old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    comm.barrier()
    return folder


def load(engine, root: Path, tag: str) -> tuple[dict, list[dict]]:
    """Load DeepSpeed state; return the meta and every saved rank's state (any world size may load them)."""
    path, _ = engine.load_checkpoint(str(root), tag=tag)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")
    folder = root / tag
    meta = json.loads((folder / "meta.json").read_text())
    states = [torch.load(folder / f"rank{r:05d}.pt", weights_only=False) for r in range(meta["world_size"])]
    return meta, states
