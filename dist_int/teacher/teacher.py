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
Both keep the invariant: their noise is a hash of global ids and the selections are exact global top-ks.
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


class Teacher:
    def __init__(self, cfg: TeacherConfig, total_steps: int, seed: int, comm: Comm, plan: BatchPlan,
                 num_points: int, error=point_l1):
        """plan: this rank's mini-batches; num_points: points in the whole signal; error: the per-point
        score of a prediction against its target (the modality's; modality/base.py)."""
        self.error = error
        check_num_points(num_points)
        self.cfg, self.total_steps, self.seed, self.comm, self.plan = cfg, total_steps, seed, comm, plan
        # Mini-batch mode advances the schedules per epoch (the authors' Pluto run); else per step.
        self.num_units = math.ceil(total_steps / plan.num_batches)
        # One cached teaching set per batch: batch -> (rows, global count, epoch it was selected in).
        self.cache: dict[int, tuple[torch.Tensor, int, int]] = {}
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
            rows, k, _ = self.cache[b]
            return TeachingSet(rows, k, False, self.max_rows(b, rows.numel()))
        rows = self.plan.rows(step)
        k = self.budget(step, total)
        gids = points.gids(rows)
        strategy = self.cfg.strategy
        offered, self._offered = self._offered, None
        salt = (self.seed, step)  # ties of the score go by a hash of (seed, step, gid) (select.tie_break)
        if strategy == "uniform":
            keys = order_keys(hash_order(gids, self.seed, step), gids, *salt)
        else:
            if offered is not None and offered[0] == step:
                err = offered[1]  # the evaluation's scoring of the same model (offer_scores)
                self.reused += 1
            else:
                err = l1_error(predict, points, rows, self.cfg.score_chunk, self.error)
            if strategy == "int":
                keys = order_keys(score_order(err), gids, *salt)
            elif strategy == "soft":
                u = hash_uniform(gids, self.seed, step, SOFT_SALT).clamp(1e-300, 1 - 1e-16)
                gumbel = -torch.log(-torch.log(u))
                score = torch.log(err.double().clamp_min(1e-30)) / self.cfg.temperature + gumbel
                keys = order_keys(score_order(score.float()), gids, *salt)
            else:  # mix: the top-k part first, then a uniform draw among everything else
                keys = self._mix_keys(err, gids, k, total, salt)
        chosen, most = top_rows(keys, k, self.comm, total)
        # Ascending rows: the same order however the set was reached (fresh, or loaded from a checkpoint).
        rows = torch.sort(rows.index_select(0, chosen)).values
        self.bytes_moved += SEARCH_BYTES if self.comm.world_size > 1 else 0
        if self.per_epoch:
            self.cache.clear()
            self._max_rows.clear()
        self.cache[b] = (rows, k, epoch)
        self._max_rows[b] = most
        self.selections += 1
        return TeachingSet(rows, k, True, self.max_rows(b, rows.numel()))

    def _mix_keys(self, err, gids, k: int, total: int, salt: tuple) -> torch.Tensor:
        """Order keys whose global top-k is mix's set: the k_top points of largest error rank above all
        others (their order32 is the largest value), the rest in a uniformly random order below them
        (31 bits of a hash, so no other point reaches the top value). One search finds the top part
        without a host read (select.top_mask), the caller's search the whole set."""
        k_top = min(round(self.cfg.mix_topk * k), k)
        rest = hash_order(gids, self.seed, salt[1], MIX_SALT) >> 1
        if k_top:
            top = top_mask(order_keys(score_order(err), gids, *salt), k_top, self.comm)
            rest = torch.where(top, (1 << 31) - 1, rest)
            self.bytes_moved += SEARCH_BYTES if self.comm.world_size > 1 else 0
        return order_keys(rest, gids, *salt)

    def selects_at(self, step: int) -> bool:
        """Whether `teaching_set(step)` runs a selection (else it reuses the batch's cached set)."""
        if self.cfg.strategy == "full":
            return False
        epoch, b = self.plan.locate(step)
        reselect = should_select(self.cfg.interval_schedule, self.schedule_time(step), self.num_units)
        return reselect or b not in self.cache or (self.per_epoch and self.cache[b][2] != epoch)

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

    def restore_cache(self, cache: dict) -> None:
        """Put back cached sets kept in memory (the divergence guard's rollback, on every rank at once)."""
        self.cache = dict(cache)
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
        """What every rank shares: the cached batches and their global budgets (chunk files hold the rest)."""
        return {"batches": {str(b): k for b, (_, k, _) in sorted(self.cache.items())},
                "epochs": {str(b): e for b, (_, _, e) in sorted(self.cache.items())}}

    def _chunk_spans(self):
        starts = self.plan.chunk_start
        for i, cid in enumerate(self.plan.own_chunks):
            yield cid, int(starts[i]), int(starts[i + 1])

    def save_chunks(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        batches = sorted(self.cache)
        rows = [self.cache[b][0].cpu().numpy() for b in batches]       # ascending shard rows
        for cid, lo, hi in self._chunk_spans():
            bits = np.zeros((len(batches), hi - lo), dtype=bool)
            for j, r in enumerate(rows):
                part = r[np.searchsorted(r, lo):np.searchsorted(r, hi)]
                bits[j, part - lo] = True
            with replaced_when_done(folder / f"chunk-{cid:08d}.npy", ".tmp.npy") as tmp:
                np.save(tmp, np.packbits(bits, axis=1))

    def checkpoint_bytes(self) -> int:
        """About what save_chunks writes: a bit per cached set and point of this rank's chunks."""
        return len(self.cache) * sum(hi - lo for _, lo, hi in self._chunk_spans()) // 8 + 4096

    def load_chunks(self, folder: Path, state: dict) -> None:
        budgets = {int(b): int(k) for b, k in state["batches"].items()}
        epochs = {int(b): int(e) for b, e in state.get("epochs", {}).items()}
        batches = sorted(budgets)
        parts: list[list[np.ndarray]] = [[] for _ in batches]
        for cid, lo, hi in self._chunk_spans():
            path = folder / f"chunk-{cid:08d}.npy"
            packed = np.load(path) if batches else None
            if batches and packed.shape != (len(batches), (hi - lo + 7) // 8):
                raise ValueError(f"{path} holds {packed.shape} bytes; expected {len(batches)} batches of a "
                                 f"{hi - lo}-point chunk")
            for j in range(len(batches)):
                parts[j].append(np.flatnonzero(np.unpackbits(packed[j], count=hi - lo)) + lo)
        device, dtype = self.plan.device, self.plan.row_dtype
        self.cache = {b: (torch.from_numpy(np.concatenate(p) if p else np.zeros(0, np.int64)).to(device, dtype),
                          budgets[b], epochs.get(b, 0)) for b, p in zip(batches, parts)}
        self._max_rows.clear()
        self._offered = None
