"""Parts sized from the budget: the passes, the batches and the windows a run uses, chosen so that they fit
(docs/training.md, "How the parts are sized"; docs/design.md, "Memory stays within one budget").

A user sets the signal and at most a budget; "make the parts smaller" is the software's job. The config's
sizes are kept wherever they fit. Where they do not, this module lowers them, in the order that changes the
least, and says which it changed:

1. the passes (`train.max_points_per_pass`, `teacher.score_chunk`, `train.eval_chunk`): a pass in pieces
   computes the same numbers (gradients of pieces add up to the whole's; no-grad pieces are per point), so
   smaller passes change only the time a step takes; each pass may take PASS_SHARE of what the field leaves;
2. the batches (`teacher.batch_points`): a batch's bookkeeping (its rows and a selection's candidates) may
   take BATCH_SHARE; beyond that the epoch is cut into more batches (mini-batch INT);
3. the windows (`teacher.window_points`): a shard that does not fit what is left streams, and its windows
   are made small enough that two of them (the one training and the next, read ahead) fit on every rank,
   checked as each rank will check its own (engine/budget.py, rank_budget; signal/stream.py, check_plan).
Only the field and its optimizer, and the outputs' buffers, cannot be made smaller here: a run they do not
fit is refused, naming the setting (engine/budget.py, check_budget).

Every rank sizes from the same numbers: the smallest budget of any rank (agreed at start-up) and the chunk
assignment of every rank (computed, no communication), so that all ranks choose one batch plan. Sizes kept
from the config do not depend on the number of ranks; sizes lowered to fit do (a rank's share of a batch
or window shrinks with more ranks), which the log line says: pin them by setting the logged values. A
resumed run keeps the batch plan of its first start (keep_plan; the run folder's plan.json).
"""

from __future__ import annotations

import copy
import math

import numpy as np

PASS_SHARE = 0.25   # of the budget beyond the field, for the largest pass's activations
BATCH_SHARE = 0.25  # of the budget beyond the field, for a batch's rows and a selection's candidates
MIN_PASS = 1024     # points: passes are not made smaller than this


def _largest_fitting(start: int, fits) -> int:
    """`start`, or the largest power of two below it (not under MIN_PASS) for which fits(n) holds."""
    n = start
    while n > MIN_PASS and not fits(n):
        n = max(MIN_PASS, 1 << ((n - 1).bit_length() - 1))  # the next power of two below
    return n


PLAN_KEYS = ("batch_points", "num_batches", "window_points")  # teacher.*: what decides the batch plan


def plan_of(cfg) -> dict:
    """The settings that decide the batch plan (teacher.batch_points, num_batches, window_points)."""
    return {k: getattr(cfg.teacher, k) for k in PLAN_KEYS}


def size_parts(cfg, store, world_size: int, device, total: int, spec=None,
               keep_plan: dict | None = None) -> tuple[object, list[str]]:
    """(cfg with the sizes that fit `total` bytes per rank, one note per size changed). spec: the field's
    (model.field_spec for the store), where computed already. keep_plan: the batch plan a previous start of
    this run chose (plan_of); a resume keeps it, so that its batches and windows, and the teacher's
    cached sets and schedules, stay those it was trained with, whatever the ranks and their memory now
    (only the passes are sized again: they change no result)."""
    from ..config import SCORING_STRATEGIES
    from ..modality import modality_for
    from ..model import field_spec
    from ..signal import assign_chunks
    from ..signal.store import held_dtype
    from .budget import ROW_BYTES, SELECT_BYTES, state_bytes

    spec = spec or field_spec(cfg.model, *store.geometry)
    buffers = modality_for(store).buffer_bytes(store, cfg.render.format)
    left = total - state_bytes(device, spec.num_params, total, buffers) - buffers
    sized, notes = copy.deepcopy(cfg), []
    t, tr = sized.teacher, sized.train
    if keep_plan is not None:
        for key, value in keep_plan.items():
            setattr(t, key, value)
    if left <= 0:
        return sized, notes  # the field alone does not fit: check_budget refuses it with the field's settings
    sizes = np.array([store.chunk_size(c) for c in range(store.num_chunks)], dtype=np.int64)
    owners = assign_chunks(store.num_chunks, world_size, cfg.seed)
    worst = max(owners, key=lambda own: int(sizes[own].sum()))  # the rank with the largest shard
    shard, slack = int(sizes[worst].sum()), len(worst)  # a rank's part of a batch: its share + a point a chunk
    points = store.num_points
    subset = t.strategy != "full"
    scores = t.strategy in SCORING_STRATEGIES or tr.snapshot_every > 0

    # 1. Passes: the no-grad ones (scoring, where something scores; evaluation and render).
    for name, owner, key in (("teacher.score_chunk", t, "score_chunk"), ("train.eval_chunk", tr, "eval_chunk")):
        if key == "score_chunk" and not scores:
            continue
        asked = getattr(owner, key)
        got = _largest_fitting(min(asked, max(shard, MIN_PASS)),
                               lambda n: spec.activation_bytes(n, False) <= left * PASS_SHARE)
        if got < min(asked, shard):
            setattr(owner, key, got)
            notes.append(f"{name} {asked:,} -> {got:,}")

    # 2. Batches: a rank's part of a batch (rows, and a selection's candidates) within BATCH_SHARE.
    per_point = ROW_BYTES + (SELECT_BYTES if subset else 0)
    batches = sized.num_batches(points)
    if keep_plan is None and (math.ceil(shard / batches) + slack) * per_point > left * BATCH_SHARE:
        need = math.ceil(shard * per_point / max(left * BATCH_SHARE - slack * per_point, 1))
        need = min(max(need, batches), int(sizes.max()))  # a chunk must hold a point of every batch
        if need > batches:
            before = math.ceil(points / batches)
            t.batch_points, t.num_batches = math.ceil(points / need), 1
            batches = sized.num_batches(points)
            notes.append(f"teacher.batch_points {before:,} -> {t.batch_points:,} ({batches:,} batches an epoch; "
                         f"every point is still visited once an epoch)")
    # The training pass: a rank's part of the largest batch (sized again below if windows change it).
    _size_train_pass(sized, spec, left, math.ceil(shard / batches) + slack, notes)

    # 3. Windows: when the largest shard does not fit what is left, it streams, and two windows must fit
    # on every rank, as each rank's streamed shard checks it (signal/stream.py, check_plan). Candidates
    # are checked exactly as the ranks will check them (engine/budget.py, rank_budget).
    point_bytes = store.channels * held_dtype(store).itemsize
    if keep_plan is None and store.num_chunks >= 2 and not store.table:
        windows = sized.num_windows(points, store.num_chunks)
        if not _windows_fit(sized, store, world_size, device, total, spec, windows, point_bytes):
            want = max(windows + 1, 2)
            while want < store.num_chunks and not _windows_fit(sized, store, world_size, device, total, spec,
                                                                 want, point_bytes):
                want = min(store.num_chunks, max(want + 1, math.ceil(want * 1.25)))
            # No number of windows helps where the fixed parts alone do not fit: the start-up check then
            # refuses with the numbers (engine/budget.py).
            if _windows_fit(sized, store, world_size, device, total, spec, want, point_bytes):
                asked = f"{t.window_points:,}" if t.window_points else "one window"
                _set_windows(sized, points, want)
                got = sized.num_windows(points, store.num_chunks)
                notes.append(f"teacher.window_points {asked} -> {t.window_points:,} ({got:,} windows an epoch)")
                if sized.num_batches(points) > batches:
                    notes.append(f"teacher.batch_points -> {t.batch_points:,} (a window holds a batch at least)")
    return sized, notes


def _size_train_pass(sized, spec, left: int, train_points: int, notes: list[str]) -> None:
    tr = sized.train
    want = min(tr.max_points_per_pass or train_points, train_points)
    got = _largest_fitting(want, lambda n: spec.activation_bytes(n, True) <= left * PASS_SHARE)
    if got < want:
        notes.append(f"train.max_points_per_pass {tr.max_points_per_pass or 'one pass'} -> {got:,}")
        tr.max_points_per_pass = got


def _set_windows(cfg, points: int, windows: int) -> None:
    """teacher.window_points for `windows` windows an epoch; batches made smaller where fewer (a window
    holds one batch at least)."""
    t = cfg.teacher
    t.window_points = -(-points // windows)
    if cfg.num_batches(points) < windows:
        t.batch_points, t.num_batches = -(-points // windows), 1


def _windows_fit(sized, store, world_size: int, device, total: int, spec, windows: int, point_bytes: int) -> bool:
    """Whether every rank passes its budget check, and two of its windows fit where its shard streams,
    with `windows` windows an epoch."""
    from ..errors import ConfigError
    from ..signal.stream import TRAIN_SHARE
    from .budget import rank_budget

    trial = copy.deepcopy(sized)
    if windows > 1:
        _set_windows(trial, store.num_points, windows)
    for rank in range(world_size):
        try:
            own, plan, budget = rank_budget(trial, store, rank, world_size, device, total, spec)
        except ConfigError:
            return False
        shard_bytes = sum(store.chunk_size(c) for c in own) * point_bytes
        if shard_bytes > budget.signal_bytes and 2 * plan.most_window_points() * point_bytes > \
                budget.signal_bytes * TRAIN_SHARE:
            return False
    return True
