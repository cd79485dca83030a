"""The teacher: which of this rank's points the learner trains on at each step.

Strategies differ only in the score that orders the candidates; the global top-k of the scores is the
teaching set (INT, Zhang et al. 2024, sec. 3: the greedy teacher shows the k points where the fit is worst).
  full    - every candidate (no selection).
  uniform - scores are counter-based hashes of (seed, step, gid): a uniform random subset.
  int     - scores are the per-point L1 error sum_c |f(x) - y|.
  mix     - a fraction teacher.mix_topk of the budget from the top-k error, the rest uniformly at random
            among the other candidates (what NINT's released code ends up doing; docs/method.md).
  soft    - sampling without replacement with probability proportional to error^(1/temperature): the
            Gumbel top-k trick on log(error) / temperature, the Gumbel noise hashed from (seed, step, gid).
  replay  - soft's sampling, on the errors the training steps observed (teacher/record.py) instead of a
            scoring pass: points never trained rank first; teacher.replay_uniform of the budget is drawn
            uniformly, so that stale records are measured again (docs/method.md, "A teacher whose scores
            come free").
All keep the invariant: their noise is a hash of global ids and the selections are exact global top-ks.
With teacher.importance = beta > 0, the sampling teachers (soft, replay) weight each selected point's loss
by 1 / q^beta, q its sampling weight, normalized to mean 1 over the global teaching set (soft mining's
correction, Kheradmand et al. 2024; prioritized replay's beta).
The ratio (k over the candidates) and the re-selection interval follow the schedules in schedules.py.
Between selections each mini-batch reuses its own cached set (not the last batch's, a defect of the
reference code; docs/method.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..comm import Comm
from ..config import SCORING_STRATEGIES, TeacherConfig
from ..files import replaced_when_done
from ..model import Predict, forward_rows
from .batches import BatchPlan
from .schedules import ratio_at, should_select
from .select import (SEARCH_BYTES, check_num_points, hash_order, hash_uniform, order_keys, score_order, top_mask,
                     top_rows)

SOFT_SALT = 0x50F7  # keeps the Gumbel noise apart from the other hashes
MIX_SALT = 0x313C


def point_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The INT score of each point: sum over channels of |f(x) - y| (INT, sec. 3)."""
    return (pred.float() - target).abs().sum(dim=1)


@torch.no_grad()
def l1_error(predict: Predict, points, rows: torch.Tensor, chunk: int, error=point_l1) -> torch.Tensor:
    """error(f(x), y) per point (default: sum_c |f(x) - y|) for the given rows of `points`, scored in
    pieces of `chunk` points (coordinates and targets are made piece by piece too). (n,) float32."""
    return torch.cat([error(pred, points.targets(part)) for part, pred in forward_rows(predict, points, rows, chunk)])


@dataclass
class TeachingSet:
    rows: torch.Tensor | None  # this rank's shard rows to train on (None: every row)
    count: int                 # size of the global teaching set, summed over ranks
    selected: bool             # whether a selection ran at this step
    max_rows: int = 0          # the most rows any rank trains on at this step
    weights: torch.Tensor | None = None      # importance weight of each row (None: all 1)
    weight_sum: torch.Tensor | None = None   # their sum over the global set (0-d, on the device)


@dataclass
class Cached:
    """A batch's teaching set kept for the steps that reuse it."""
    rows: torch.Tensor
    count: int
    epoch: int
    weights: torch.Tensor | None = None
    weight_sum: torch.Tensor | None = None


class Teacher:
    def __init__(self, cfg: TeacherConfig, total_steps: int, seed: int, comm: Comm, plan: BatchPlan,
                 num_points: int, error=point_l1, record=None, error_scale: float = 1.0):
        """plan: this rank's mini-batches; num_points: points in the whole signal; error: the per-point
        score of a prediction against its target (the modality's; modality/base.py); record: the replay
        teacher's ErrorRecord (teacher/record.py); error_scale: the largest sensible error of a point
        (channels x the targets' span), the scale of the importance weights' floor and ceiling."""
        self.error, self.record, self.error_scale = error, record, error_scale
        check_num_points(num_points)
        self.cfg, self.total_steps, self.seed, self.comm, self.plan = cfg, total_steps, seed, comm, plan
        # Mini-batch mode advances the schedules per epoch (the authors' Pluto run); else per step.
        self.num_units = math.ceil(total_steps / plan.num_batches)
        # One cached teaching set per batch.
        self.cache: dict[int, Cached] = {}
        # With windows, a batch holds other chunks every epoch, so a set selected in an earlier epoch names
        # points the batch no longer holds (and a streamed shard no longer has in memory): reselect, and
        # keep only the set in use (batches/sets of other windows would only fill memory).
        self.per_epoch = plan.per_epoch
        # batch -> the most rows any rank holds of its current set. Every rank adds and drops entries at
        # the same steps (selections, loads, rollbacks), so the collective that fills one runs everywhere.
        self._max_rows: dict[int, int] = {}
        self.selections = 0     # selections run, and bytes each rank sent for them, since the last read
        self.bytes_moved = 0
        self.reused = 0         # selections that used an evaluation's scores instead of a scoring pass
        self._offered: tuple[int, torch.Tensor] | None = None

    def schedule_time(self, step: int) -> int:
        return step // self.plan.num_batches

    def budget(self, step: int, num_candidates: int) -> int:
        r = ratio_at(self.cfg.ratio_schedule, self.schedule_time(step), self.num_units, self.cfg.ratio)
        return max(1, min(num_candidates, round(r * num_candidates)))

    def teaching_set(self, step: int, points, predict: Predict) -> TeachingSet:
        """points: this rank's shard (coords/targets/gids of rows, on the compute device); predict: the
        model at the precision training uses (the teacher never scores at a lower one)."""
        epoch, b = self.plan.locate(step)
        total = self.plan.count(step)
        if self.cfg.strategy == "full":
            rows = None if self.plan.num_batches == 1 else self.plan.rows(step)
            n = points.num_points if rows is None else rows.numel()
            return TeachingSet(rows, total, False, self.max_rows(b, n))
        if not self.selects_at(step):
            c = self.cache[b]
            return TeachingSet(c.rows, c.count, False, self.max_rows(b, c.rows.numel()), c.weights, c.weight_sum)
        rows = self.plan.rows(step)
        k = self.budget(step, total)
        gids = points.gids(rows)
        strategy = self.cfg.strategy
        offered, self._offered = self._offered, None
        salt = (self.seed, step)  # ties of the score go by a hash of (seed, step, gid) (select.tie_break)
        weights = None
        if strategy == "uniform":
            keys = order_keys(hash_order(gids, self.seed, step), gids, *salt)
        elif strategy == "replay":
            err = self.record.scores(rows)  # the errors the training steps observed: no forward pass
            keys = self._mix_keys(self._raced(err, gids, step), gids, k, 1.0 - self.cfg.replay_uniform, salt)
        else:
            if offered is not None and offered[0] == step:
                err = offered[1]  # the evaluation's scoring of the same model (offer_scores)
                self.reused += 1
            else:
                err = l1_error(predict, points, rows, self.cfg.score_chunk, self.error)
            if strategy == "int":
                keys = order_keys(score_order(err), gids, *salt)
            elif strategy == "soft":
                keys = order_keys(self._sampled(err, gids, step), gids, *salt)
            else:  # mix: the top-k part first, then a uniform draw among everything else
                keys = self._mix_keys(score_order(err), gids, k, self.cfg.mix_topk, salt)
        chosen, most = top_rows(keys, k, self.comm, total)
        if self.cfg.importance > 0 and strategy in ("soft", "replay"):
            weights = self._weights(err, chosen)
        # Ascending rows: the same order however the set was reached (fresh, or loaded from a checkpoint).
        rows, order = torch.sort(rows.index_select(0, chosen))
        weight_sum = None
        if weights is not None:
            weights = weights.index_select(0, order)
            weight_sum = self.comm.all_reduce_sum(weights.sum(dtype=torch.float64))
        self.bytes_moved += SEARCH_BYTES if self.comm.world_size > 1 else 0
        if self.per_epoch:
            self.cache.clear()
            self._max_rows.clear()
        self.cache[b] = Cached(rows, k, epoch, weights, weight_sum)
        self._max_rows[b] = most
        self.selections += 1
        return TeachingSet(rows, k, True, self.max_rows(b, rows.numel()), weights, weight_sum)

    def _sampled(self, err: torch.Tensor, gids: torch.Tensor, step: int) -> torch.Tensor:
        """Score orders for sampling without replacement in proportion to err^(1/temperature): the Gumbel
        top-k trick on log(err) / temperature, the noise hashed from (seed, step, gid). An infinite error
        (a point the replay record never observed) stays first."""
        u = hash_uniform(gids, self.seed, step, SOFT_SALT).clamp(1e-300, 1 - 1e-16)
        gumbel = -torch.log(-torch.log(u))
        score = torch.log(err.double().clamp_min(1e-30)) / self.cfg.temperature + gumbel
        return score_order(score.float())

    def _raced(self, err: torch.Tensor, gids: torch.Tensor, step: int) -> torch.Tensor:
        """The same sampling as `_sampled`, in float32 with one logarithm: ordering by log(w) + Gumbel noise
        is ordering by w / E with E = -log(u) an exponential draw (an exponential race), for w =
        err^(1/temperature). The replay teacher draws this for every candidate at every step, so its cost
        is the selection's (bench/results/replay.md)."""
        u = hash_uniform(gids, self.seed, step, SOFT_SALT).float().clamp_(1e-30, 1 - 2**-24)
        w = err if self.cfg.temperature == 1 else err.pow(1.0 / self.cfg.temperature)
        return score_order(w / -torch.log(u))

    def _weights(self, err: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Importance weights of the chosen candidates, 1 / q^beta with q = err^(1/temperature) their
        sampling weight (soft mining's 1/q; prioritized replay's beta), unnormalized: the training step
        divides by their global sum. Errors are floored at 1e-3 of the error scale (a point fit exactly
        would otherwise take the whole batch's weight); a never observed point counts as the largest
        error (new items at the highest priority, as in prioritized replay)."""
        e = err.index_select(0, chosen).clamp(1e-3 * self.error_scale, self.error_scale)
        return e.pow(-self.cfg.importance / self.cfg.temperature).float()

    def _mix_keys(self, top_order: torch.Tensor, gids, k: int, share: float, salt: tuple) -> torch.Tensor:
        """Order keys whose global top-k is a mixed set: the round(share * k) points of largest `top_order`
        rank above all others (their order32 is the largest value), the rest in a uniformly random order
        below them (31 bits of a hash, so no other point reaches the top value). One search finds the top
        part without a host read (select.top_mask), the caller's search the whole set. mix: the top part
        by error; replay: by its sampling order, the rest uniform (teacher.replay_uniform)."""
        k_top = min(round(share * k), k)
        rest = hash_order(gids, self.seed, salt[1], MIX_SALT) >> 1
        if k_top >= k:
            return order_keys(top_order, gids, *salt)
        if k_top:
            top = top_mask(order_keys(top_order, gids, *salt), k_top, self.comm)
            rest = torch.where(top, (1 << 31) - 1, rest)
            self.bytes_moved += SEARCH_BYTES if self.comm.world_size > 1 else 0
        return order_keys(rest, gids, *salt)

    @property
    def observes(self) -> bool:
        """Whether the training step should hand over the errors it measures (`observe`)."""
        return self.record is not None

    def observe(self, rows: torch.Tensor, errors: torch.Tensor) -> None:
        """The errors a training step measured at the rows it trained: the replay record keeps them."""
        self.record.observe(rows, errors)

    def selects_at(self, step: int) -> bool:
        """Whether `teaching_set(step)` runs a selection (else it reuses the batch's cached set)."""
        if self.cfg.strategy == "full":
            return False
        epoch, b = self.plan.locate(step)
        reselect = should_select(self.cfg.interval_schedule, self.schedule_time(step), self.num_units)
        return reselect or b not in self.cache or (self.per_epoch and self.cache[b].epoch != epoch)

    def wants_scores(self, step: int) -> bool:
        """Whether a scoring pass of every candidate would run at `step`: then an evaluation of the same
        model may hand its per-point errors over (offer_scores) instead."""
        return self.cfg.strategy in SCORING_STRATEGIES and self.plan.num_batches == 1 and \
            self.selects_at(step)

    def offer_scores(self, step: int, errors: torch.Tensor) -> None:
        """Per-point errors of every row of this rank's shard, computed from the model the selection at
        `step` would score, in the same pieces and precision (docs/method.md, "Cheaper selection"). Used
        once, by that selection; dropped by anything else."""
        self._offered = (step, errors)

    def max_rows(self, b: int, n: int) -> int:
        """The most rows any rank holds of batch b's current set (n: this rank's): one host-only collective
        when the set changed (at a selection; once per batch for `full`, whose batch sizes never change),
        then remembered."""
        if b not in self._max_rows:
            self._max_rows[b] = int(self.comm.agree_max([n])[0])
        return self._max_rows[b]

    def rollback_state(self):
        """What a divergence rollback restores: the cached sets and the replay record (a copy)."""
        return dict(self.cache), None if self.record is None else self.record.values.clone()

    def restore_rollback_state(self, state) -> None:
        """Put back what rollback_state kept (the divergence guard's rollback, on every rank at once)."""
        cache, values = state
        self.cache = dict(cache)
        if values is not None:
            self.record.values.copy_(values)
        self._max_rows.clear()
        self._offered = None

    def selection_stats(self) -> tuple[int, int, int]:
        """(selections, bytes this rank sent for them, selections that reused an evaluation's scores)
        since the last call."""
        out = (self.selections, self.bytes_moved, self.reused)
        self.selections = self.bytes_moved = self.reused = 0
        return out

    # Checkpointing (docs/design.md, "Resuming"): the cached sets are saved per chunk, a bit per point, in
    # one file per chunk; each rank writes and reads only the chunks it owns, on any world size.
    def state_dict(self) -> dict:
        """What every rank shares: the cached batches, their global budgets and weight sums, the record's
        cells (chunk files hold the rest)."""
        state = {"batches": {str(b): c.count for b, c in sorted(self.cache.items())},
                 "epochs": {str(b): c.epoch for b, c in sorted(self.cache.items())}}
        sums = {str(b): float(c.weight_sum) for b, c in sorted(self.cache.items()) if c.weight_sum is not None}
        if sums:
            state["weight_sums"] = sums
        if self.record is not None:
            state["record_shift"] = self.record.shift
        return state

    def _chunk_spans(self):
        starts = self.plan.chunk_start
        for i, cid in enumerate(self.plan.own_chunks):
            yield cid, int(starts[i]), int(starts[i + 1])

    def save_chunks(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        batches = sorted(self.cache)
        rows = [self.cache[b].rows.cpu().numpy() for b in batches]       # ascending shard rows
        weights = [None if self.cache[b].weights is None else self.cache[b].weights.cpu().numpy() for b in batches]
        for i, (cid, lo, hi) in enumerate(self._chunk_spans()):
            bits = np.zeros((len(batches), hi - lo), dtype=bool)
            kept = {}
            for j, r in enumerate(rows):
                a, z = np.searchsorted(r, lo), np.searchsorted(r, hi)
                bits[j, r[a:z] - lo] = True
                if weights[j] is not None:
                    kept[f"w{j}"] = weights[j][a:z]  # in row order, as the bits list them
            with replaced_when_done(folder / f"chunk-{cid:08d}.npy", ".tmp.npy") as tmp:
                np.save(tmp, np.packbits(bits, axis=1))
            if kept:
                with replaced_when_done(folder / f"chunk-{cid:08d}.weights.npz", ".tmp.npz") as tmp:
                    np.savez(tmp, **kept)
            if self.record is not None:
                with replaced_when_done(folder / f"chunk-{cid:08d}.record.npy", ".tmp.npy") as tmp:
                    np.save(tmp, self.record.chunk_values(i))

    def checkpoint_bytes(self) -> int:
        """About what save_chunks writes: a bit per cached set and point of this rank's chunks, the
        weights of the cached sets, the record."""
        points = sum(hi - lo for _, lo, hi in self._chunk_spans())
        weights = sum(c.rows.numel() * 4 for c in self.cache.values() if c.weights is not None)
        return len(self.cache) * points // 8 + weights + (self.record.num_bytes if self.record else 0) + 4096

    def load_chunks(self, folder: Path, state: dict) -> None:
        budgets = {int(b): int(k) for b, k in state["batches"].items()}
        epochs = {int(b): int(e) for b, e in state.get("epochs", {}).items()}
        batches = sorted(budgets)
        parts: list[list[np.ndarray]] = [[] for _ in batches]
        wparts: list[list[np.ndarray]] = [[] for _ in batches]
        for cid, lo, hi in self._chunk_spans():
            path = folder / f"chunk-{cid:08d}.npy"
            packed = np.load(path) if batches else None
            if batches and packed.shape != (len(batches), (hi - lo + 7) // 8):
                raise ValueError(f"{path} holds {packed.shape} bytes; expected {len(batches)} batches of a "
                                 f"{hi - lo}-point chunk")
            for j in range(len(batches)):
                parts[j].append(np.flatnonzero(np.unpackbits(packed[j], count=hi - lo)) + lo)
            wpath = folder / f"chunk-{cid:08d}.weights.npz"
            if wpath.is_file():
                with np.load(wpath) as saved:
                    for j in range(len(batches)):
                        wparts[j].append(saved[f"w{j}"])
        if self.record is not None:
            self.record.coarsen(max(self.record.shift, int(state.get("record_shift", 0))))
            for i, (cid, _, _) in enumerate(self._chunk_spans()):
                self.record.load_chunk(i, np.load(folder / f"chunk-{cid:08d}.record.npy"),
                                       int(state.get("record_shift", 0)))
        device, dtype = self.plan.device, self.plan.row_dtype
        sums = state.get("weight_sums", {})
        self.cache = {}
        for j, (b, p) in enumerate(zip(batches, parts)):
            rows = torch.from_numpy(np.concatenate(p) if p else np.zeros(0, np.int64)).to(device, dtype)
            weights = weight_sum = None
            if str(b) in sums:
                weights = torch.from_numpy(np.concatenate(wparts[j]) if wparts[j] else np.zeros(0, np.float32))
                weights = weights.to(device)
                weight_sum = torch.tensor(sums[str(b)], dtype=torch.float64, device=device)
            self.cache[b] = Cached(rows, budgets[b], epochs.get(b, 0), weights, weight_sum)
        self._max_rows.clear()
        self._offered = None
