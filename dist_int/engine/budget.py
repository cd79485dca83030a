"""One memory budget per rank, split before anything is loaded (docs/design.md, "Memory stays within one
budget"; docs/training.md, "Memory").

`train.memory_mb` (or, at 0, this machine's memory shared by the ranks on it, or the GPU's) bounds what a
rank holds beyond a constant (Python, torch, DeepSpeed). The parts whose size the config and the signal
fix come first: the field with its gradients and optimizer state (and the divergence guard's copy), the
largest pass's activations, the teacher's state, a selection's candidates, a batch's rows, the render and
export buffers. What is left is the signal's: a shard that fits it stays resident; a larger one is
streamed a window at a time (signal/stream.py). A budget that cannot hold the fixed parts, or one window
and the next, is refused at start-up with the numbers and the key to change.

A mistyped width (model.hidden=100000), a hash table of 2^30 rows or a whole gigapixel batch in one pass
would otherwise fail minutes later with an allocator error, or swap the machine to a halt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

import torch

from ..config import SCORING_STRATEGIES
from ..errors import ConfigError
from ..hostmem import memory_limit
from ..model import FieldSpec
from ..teacher.record import BYTES as RECORD_BYTES, cells_per_chunk, record_shift

# The field's training state in copies of its fp32 parameters. Measured (bench/state_copies.py, a 57.9 M
# parameter hash field: bench/results/state_copies.md): weights 4.1 bytes a parameter, DeepSpeed's engine
# 1.3, gradients and Adam's two moments after the first steps 11.7: 17.1 in all, counted as 5 copies. The
# divergence guard's last good state (weights and both moments) adds 12.0, counted as 3 more where it is
# kept in memory (guard_place).
STATE_COPIES = 5
GUARD_COPIES = 3
GUARD_SHARE = 0.25  # of the budget, at most, for the guard's state in memory; beyond it, the state goes to disk
SELECT_BYTES = 96  # per candidate of a selection: global id, order key, score, noise and their temporaries;
                   # measured (tests/test_trainer_parts.py) at 76 bytes for `soft`, 60 `mix`, 52 `int`, 48
                   # `uniform`; a shard computes its ids with a few temporaries more than the test's table
ROW_BYTES = 80     # per point of a batch: its row, the keyed order's temporaries (teacher/batches.py) and
                   # the previous batch's rows; BatchPlan.rows peaked at 73 bytes a row above its start
                   # for 1 M rows (tests/test_trainer_parts.py measures it)
CACHE_BYTES = 4    # per point of a cached teaching set (an int32 row; 4 more with importance weights)
RECORD_SHARE = 0.25  # of the budget, at most, for the replay teacher's error record and its rollback copy
SAFETY = 0.9       # of the machine's share, when train.memory_mb is 0
# Memory the budget does not count, measured on the 2-core CPU machine (docs/training.md, "How the parts are
# sized"): torchrun's agent holds 222 MiB; a rank of the 2-rank demo run peaks at 485-511 MiB, nearly all of
# it Python, torch, DeepSpeed and gloo (their imports and a process group alone take 257 MiB).
LAUNCHER_BYTES = 256 << 20   # torchrun's agent, on each host
RANK_BASE_BYTES = 512 << 20  # a rank's constant


BUFFERS = "for the render, metric and export buffers"


def guard_place(device: torch.device, num_params: int, total: int, buffers: int = 0) -> str:
    """Where the divergence guard keeps its last good state (engine/guard.py): "host" memory for a field on
    a GPU (not the GPU's), "memory" where it takes at most GUARD_SHARE of what the budget leaves beside the
    parts that cannot shrink (the field's own state and the outputs' `buffers`), else "disk" (a file in the
    run folder, written at each snapshot, read on a rollback)."""
    if device.type == "cuda":
        return "host"
    left = total - num_params * 4 * STATE_COPIES - buffers
    return "memory" if num_params * 4 * GUARD_COPIES <= left * GUARD_SHARE else "disk"


def state_bytes(device: torch.device, num_params: int, total: int, buffers: int = 0) -> int:
    """The field's training state: weights, gradients, Adam's moments, DeepSpeed's buffers, and the guard's
    copy where it is kept in the budget's memory."""
    guard = GUARD_COPIES if guard_place(device, num_params, total, buffers) == "memory" else 0
    return num_params * 4 * (STATE_COPIES + guard)


def host_share(local: int) -> tuple[int, str]:
    """A rank's share of the job's memory on this host, and where it comes from: the smallest of physical
    memory, the process's cgroup limit and SLURM's memory for the job (dist_int/hostmem.py), less the
    launcher's headroom and every local rank's constant (Python, torch, DeepSpeed, which the budget does not
    count), shared by the local ranks, with a margin. Under a cgroup the kernel kills the whole group at its
    limit, so the constants must come off before the budget is shared out."""
    limit, source = memory_limit()
    free = limit - LAUNCHER_BYTES - local * RANK_BASE_BYTES
    return max(int(free * SAFETY / local), 0), f"{source} ({_mib(limit)}) shared by {local} rank(s)"


def available(device: torch.device, memory_mb: float) -> tuple[int, str, str | None]:
    """(bytes, where they come from, a warning or None): train.memory_mb, or the rank's share of the job's
    memory on this host (host_share), or on a GPU the smaller of the GPU's memory and that host share (the
    host holds the read-ahead, render and export buffers). A train.memory_mb beyond the host share gets the
    warning: the run may then be killed by the kernel, or swap, instead of streaming."""
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share, source = host_share(local)
    if memory_mb > 0:
        asked = int(memory_mb * 2**20)
        warning = (f"train.memory_mb={memory_mb:g} is more than a rank's share of {source}, {_mib(share)}; the "
                   f"run may be killed for memory or swap instead of streaming"
                   if asked > share and device.type != "cuda" else None)  # on a GPU it bounds the GPU's
        return asked, "train.memory_mb", warning
    if device.type == "cuda":
        gpu = int(torch.cuda.mem_get_info(device)[1] * SAFETY)
        return (gpu, "the GPU", None) if gpu <= share else (share, source + " (less than the GPU's)", None)
    return share, source + " (train.memory_mb = 0)", None


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


@dataclass
class Budget:
    """A rank's budget and what its fixed parts take; the rest is the signal's."""
    total: int
    where: str                      # the key or device the total comes from
    parts: dict[str, int] = field(default_factory=dict)
    warning: str | None = None      # e.g. train.memory_mb beyond the host's memory
    record_shift: int = 0           # the replay record's cells: 2^shift samples per axis (teacher/record.py)

    @property
    def fixed(self) -> int:
        return sum(self.parts.values())

    @property
    def signal_bytes(self) -> int:
        return max(0, self.total - self.fixed)

    def describe(self) -> str:
        return ", ".join(f"{_mib(v)} {k}" for k, v in self.parts.items() if v)


def plan_budget(cfg, device: torch.device, spec: FieldSpec, shard_points: int, batch_points: int,
                windows: int, buffer_bytes: int, extents=None, total: int | None = None) -> Budget:
    """Split this rank's budget. shard_points: the points of this rank's chunks; batch_points: the most
    points of one batch on this rank; buffer_bytes: the modality's render, metric and export buffers;
    extents: (chunks, D) samples per axis of this rank's chunks (the replay record's layout); total: the
    budget agreed by the ranks (the smallest of theirs), else this rank's own."""
    own, where, warning = available(device, cfg.train.memory_mb)
    total = own if total is None else total
    train_points = min(cfg.train.max_points_per_pass or batch_points, batch_points)
    # Passes of teacher.score_chunk points run only where something scores: an error-driven teacher, or
    # teaching-set snapshots (which score for the report); evaluation and render use train.eval_chunk.
    scores = cfg.teacher.strategy in SCORING_STRATEGIES or cfg.train.snapshot_every > 0
    nograd_points = min(max(cfg.teacher.score_chunk if scores else 0, cfg.train.eval_chunk), shard_points)
    subset = cfg.teacher.strategy != "full"
    # Cached teaching sets: one per batch while batches keep their points (one window), else only the set
    # in use (teacher/teacher.py).
    cached = (shard_points if windows == 1 else batch_points) if subset else 0
    # The replay teacher's record (and the guard's copy of it): a value a point, or a cell where that would
    # take more than RECORD_SHARE of the budget (teacher/record.py).
    shift, record = 0, 0
    if cfg.teacher.strategy == "replay":
        extents = np.zeros((0, 1), dtype=np.int64) if extents is None else extents
        shift = record_shift(extents, int(total * RECORD_SHARE / 2))
        record = 2 * RECORD_BYTES * int(cells_per_chunk(extents, shift).sum())
    weighted = 2 if cfg.teacher.importance > 0 else 1
    parts = {
        "for the field and its optimizer": state_bytes(device, spec.num_params, total, buffer_bytes),
        f"for the activations of the largest pass ({max(train_points, nograd_points):,} points)": max(
            spec.activation_bytes(train_points, True), spec.activation_bytes(nograd_points, False)),
        "for the teacher's cached sets": cached * CACHE_BYTES * weighted,
        "for the teacher's error record": record,
        "for a selection's candidates": batch_points * SELECT_BYTES if subset else 0,
        "for a batch's rows": batch_points * ROW_BYTES,
        BUFFERS: buffer_bytes,
    }
    return Budget(total, where, parts, warning, shift)


def rank_budget(cfg, store, rank: int, world_size: int, device: torch.device, total: int | None = None,
                spec: FieldSpec | None = None):
    """This rank's chunks, batch plan and budget for `store` under `cfg` (sized already: engine/sizing.py):
    (own chunk ids, plan, budget). total: the budget agreed by the ranks. No signal value is read."""

    from ..modality import modality_for
    from ..model import field_spec
    from ..signal import assign_chunks
    from ..signal.store import held_dtype
    from ..teacher import make_plan

    own = assign_chunks(store.num_chunks, world_size, cfg.seed)[rank]
    sizes = [store.chunk_size(c) for c in range(store.num_chunks)]
    chunk_start = np.concatenate([[0], np.cumsum([sizes[c] for c in own])]).astype(np.int64)
    windows = cfg.num_windows(store.num_points, store.num_chunks)
    plan = make_plan(sizes, own, chunk_start, cfg.num_batches(store.num_points), cfg.seed, device, windows,
                     cfg.train.steps)
    spec = spec or field_spec(cfg.model, *store.geometry)
    batch = -(-plan.most_window_points() // plan.per_window) + len(plan.window_indices(0, 0))
    extents = np.array([[s.stop - s.start for s in store.chunk_slices(c)] for c in own], dtype=np.int64)
    budget = plan_budget(cfg, device, spec, int(chunk_start[-1]), batch, windows,
                         modality_for(store).buffer_bytes(store, cfg.render.format), extents, total)
    shard_bytes = int(chunk_start[-1]) * store.channels * held_dtype(store).itemsize
    streamed = shard_bytes > budget.signal_bytes and not store.table  # as open_shard decides
    check_budget(cfg, budget, spec, 0 if streamed else shard_bytes, streamed)
    return own, plan, budget


def check_budget(cfg, budget: Budget, spec: FieldSpec, shard_bytes: int, streamed: bool) -> None:
    """Refuse a run whose fixed parts leave nothing for the signal, or whose resident shard does not fit."""
    # The parts that cannot be made smaller (engine/sizing.py sizes the rest): the field's training state
    # (the least it needs: the guard's copy on disk) and the outputs' buffers.
    least = spec.num_params * 4 * STATE_COPIES
    buffers = budget.parts.get(BUFFERS, 0)
    if least + buffers > budget.total and buffers > least:  # the outputs' buffers are the larger part
        raise ConfigError(f"train.memory_mb: rendering, metrics and export of this signal hold about "
                          f"{_mib(buffers)} at once ({BUFFERS[4:]}), besides {_mib(least)} for the field and its "
                          f"optimizer: more than {budget.where} offers ({_mib(budget.total)}); raise "
                          f"train.memory_mb")
    if least + buffers > budget.total:
        key, fix, what = spec.field_kind.too_large(cfg.model, spec)
        also = f" and {_mib(buffers)} {BUFFERS}" if buffers else ""
        raise ConfigError(f"{key}: the field needs about {_mib(least)} for {what} and its optimizer{also}, more "
                          f"than {budget.where} offers ({_mib(budget.total)}); {fix}, or raise train.memory_mb")
    need = budget.fixed + (0 if streamed else shard_bytes)
    if need > budget.total or (streamed and budget.signal_bytes == 0):
        raise ConfigError(
            f"this run needs about {_mib(need)} on each rank ({budget.describe()}"
            + ("" if streamed else f", {_mib(shard_bytes)} for its shard of the signal")
            + f"), more than {budget.where} offers ({_mib(budget.total)}); raise train.memory_mb, use more ranks, "
              f"or make the parts smaller: train.max_points_per_pass, teacher.score_chunk and train.eval_chunk "
              f"bound a pass, teacher.batch_points a batch")


def check_field(cfg, device: torch.device, spec: FieldSpec, total: int | None = None) -> None:
    """The field alone, before anything else is known or written (total: the ranks' agreed budget)."""
    own, where, _ = available(device, cfg.train.memory_mb)
    check_budget(cfg, Budget(own if total is None else total, where), spec, 0, True)
