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
   are made small enough that two of them (the one training and the next, read ahead) fit.
Only the field and its optimizer cannot be made smaller here: a field that does not fit is refused, naming
the field's own settings (engine/budget.py, check_budget).

Every rank sizes from the same numbers: the smallest budget of any rank (agreed at start-up) and the
largest shard of any rank (computed from the chunk assignment, no communication), so that all ranks use
one batch plan. Sizes kept from the config do not depend on the number of ranks; sizes lowered to fit do
(a rank's share of a batch or window shrinks with more ranks), which the log line says: pin them by setting
the logged values.
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


def size_parts(cfg, store, world_size: int, device, total: int, spec=None) -> tuple[object, list[str]]:
    """(cfg with the sizes that fit `total` bytes per rank, one note per size changed). spec: the field's
    (model.field_spec for the store), where computed already."""
    from ..modality import modality_for
    from ..model import field_spec
    from ..signal import assign_chunks
    from ..signal.store import held_dtype
    from ..teacher import make_plan
    from .budget import ROW_BYTES, SELECT_BYTES, plan_budget, state_bytes

    spec = spec or field_spec(cfg.model, *store.geometry)
    buffers = modality_for(store).buffer_bytes(store, cfg.render.format)
    left = total - state_bytes(device, spec.num_params, total) - buffers
    if left <= 0:
        return cfg, []  # the field alone does not fit: check_budget refuses it with the field's settings
    sized, notes = copy.deepcopy(cfg), []
    t, tr = sized.teacher, sized.train
    sizes = np.array([store.chunk_size(c) for c in range(store.num_chunks)], dtype=np.int64)
    owners = assign_chunks(store.num_chunks, world_size, cfg.seed)
    shard = max(int(sizes[own].sum()) for own in owners)  # the largest shard of any rank
    points = store.num_points
    subset = t.strategy != "full"

    # 1. Passes: the no-grad ones (scoring, evaluation, render) and the training one.
    for name, key, train in (("teacher.score_chunk", "score_chunk", False), ("train.eval_chunk", "eval_chunk", False)):
        owner = t if key == "score_chunk" else tr
        asked = getattr(owner, key)
        got = _largest_fitting(min(asked, max(shard, MIN_PASS)),
                               lambda n: spec.activation_bytes(n, False) <= left * PASS_SHARE)
        if got < min(asked, shard):
            setattr(owner, key, got)
            notes.append(f"{name} {asked:,} -> {got:,}")

    # 2. Batches: a rank's part of a batch (rows, and a selection's candidates) within BATCH_SHARE.
    per_point = ROW_BYTES + (SELECT_BYTES if subset else 0)
    batches = cfg.num_batches(points)
    per_rank = math.ceil(shard / batches) + len(owners[0])
    if per_rank * per_point > left * BATCH_SHARE:
        need = math.ceil(shard * per_point / max(left * BATCH_SHARE - len(owners[0]) * per_point, 1))
        need = min(max(need, batches), int(sizes.max()))  # a chunk must hold a point of every batch
        if need > batches:
            asked = t.batch_points or f"{points:,} (teacher.num_batches = {t.num_batches})"
            t.batch_points, t.num_batches = math.ceil(points / need), 1
            notes.append(f"teacher.batch_points {asked if isinstance(asked, str) else f'{asked:,}'} -> "
                         f"{t.batch_points:,}")
            batches = sized.num_batches(points)
    train_points = min(tr.max_points_per_pass or per_rank, math.ceil(shard / batches) + len(owners[0]))
    got = _largest_fitting(train_points, lambda n: spec.activation_bytes(n, True) <= left * PASS_SHARE)
    if got < train_points:
        notes.append(f"train.max_points_per_pass {tr.max_points_per_pass or 'one pass'} -> {got:,}")
        tr.max_points_per_pass = got

    # 3. Windows: when the largest shard does not fit what is left, two windows must. What is left is the
    # budget's own split (engine/budget.py) for the rank with the largest shard, with the sizes so far.
    point_bytes = store.channels * held_dtype(store).itemsize
    worst = max(owners, key=lambda own: int(sizes[own].sum()))
    extents = np.array([[sl.stop - sl.start for sl in store.chunk_slices(c)] for c in worst], dtype=np.int64)
    batch = math.ceil(shard / batches) + len(worst)
    windows = cfg.num_windows(points, store.num_chunks)

    def signal_left(n: int) -> int:
        return plan_budget(sized, device, spec, shard, batch, n, buffers, extents, total).signal_bytes

    left_now, want = signal_left(windows), windows
    if subset and windows == 1 and shard * point_bytes > left_now:
        # In one window a subset teacher caches a teaching set per batch (4 bytes a point of the shard);
        # with more windows it caches only the set in use, which leaves the signal that much more.
        left_now, want = signal_left(2), 2
    if shard * point_bytes > left_now and not store.table and left_now > 0:
        from ..signal.stream import TRAIN_SHARE

        fits = left_now * TRAIN_SHARE / 2  # bytes of one window on the rank that holds the most of it
        # Windows are dealt anew every epoch, so a rank's share of one varies: checked on the rank with the
        # largest shard, as the streamed shard will check it (signal/stream.py, check_plan).
        start = np.concatenate([[0], np.cumsum(sizes[worst])]).astype(np.int64)

        def window_fits(n: int) -> bool:
            plan = make_plan(sizes.tolist(), worst, start, max(batches, n), cfg.seed, "cpu", n, cfg.train.steps)
            return plan.most_window_points() * point_bytes <= fits

        if not window_fits(want):  # the config's windows are kept where two of them fit
            want = min(store.num_chunks, max(want, 2, math.ceil(shard * point_bytes / fits * 1.25)))
            while want < store.num_chunks and not window_fits(want):
                want = min(store.num_chunks, math.ceil(want * 1.25))
    if want > windows:
        asked = t.window_points or "one window"
        t.window_points = math.ceil(points / want)
        if batches < want:  # a window holds at least one batch
            t.batch_points, t.num_batches = math.ceil(points / want), 1
            notes.append(f"teacher.batch_points -> {t.batch_points:,} (one batch a window at least)")
        notes.append(f"teacher.window_points {asked if isinstance(asked, str) else f'{asked:,}'} -> "
                     f"{t.window_points:,}")
    return sized, notes
