"""The teacher: which of this rank's points the learner trains on at each step.

Strategies differ only in how they key candidates; the global top-k of the keys is the teaching set.
  full    - every candidate (no selection).
  uniform - keys are counter-based hashes of (seed, step, gid): a uniform random subset.
  int     - keys are the per-point L1 error sum_c |f(x) - y| (INT, Zhang et al. 2024, eq. for the greedy
            teacher: the k points where the current fit is worst).
Another strategy (NINT's mix, EVOS-style soft sampling via Gumbel top-k) is another key function.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..comm import Comm
from ..config import TeacherConfig
from .batches import BatchPlan
from .schedules import ratio_at, should_select
from .select import global_topk, hash_uniform

Predict = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def l1_error(predict: Predict, coords: torch.Tensor, values: torch.Tensor, chunk: int) -> torch.Tensor:
    """sum_c |f(x) - y| for every point, in chunks of `chunk` points so memory stays bounded. (n,) float32."""
    out = torch.empty(coords.shape[0], dtype=torch.float32, device=coords.device)
    for i in range(0, coords.shape[0], chunk):
        pred = predict(coords[i:i + chunk]).float()
        out[i:i + chunk] = (pred - values[i:i + chunk]).abs().sum(dim=1)
    return out


class Teacher:
    def __init__(self, cfg: TeacherConfig, total_steps: int, seed: int, comm: Comm, plan: BatchPlan):
        self.cfg, self.total_steps, self.seed, self.comm, self.plan = cfg, total_steps, seed, comm, plan
        # Mini-batch mode advances the schedules per epoch (INT_REFERENCE: Pluto run); else per step.
        self.num_units = math.ceil(total_steps / plan.num_batches)
        # One cached teaching set per batch (not the reference code's single stale cache): batch -> rows.
        self.cache: dict[int, tuple[torch.Tensor, int]] = {}

    def schedule_time(self, step: int) -> int:
        return step // self.plan.num_batches

    def budget(self, step: int, num_candidates: int) -> int:
        r = ratio_at(self.cfg.ratio_schedule, self.schedule_time(step), self.num_units, self.cfg.ratio)
        return max(1, min(num_candidates, round(r * num_candidates)))

    def teaching_set(self, step: int, coords: torch.Tensor, values: torch.Tensor, gids: torch.Tensor,
                     predict: Predict) -> tuple[torch.Tensor | None, int, bool]:
        """(shard rows to train on, or None for all of them; size of the global teaching set; whether a
        selection ran this step). coords/values/gids are the whole shard on the compute device."""
        _, b = self.plan.locate(step)
        total = self.plan.global_count(b)
        if self.cfg.strategy == "full":
            rows = None if self.plan.num_batches == 1 else self.plan.rows(step).to(coords.device)
            return rows, total, False
        reselect = should_select(self.cfg.interval_schedule, self.schedule_time(step), self.num_units)
        if not reselect and b in self.cache:
            rows, k = self.cache[b]
            return rows, k, False
        rows = self.plan.rows(step).to(coords.device)
        k = self.budget(step, total)
        cand_gids = gids[rows]
        if self.cfg.strategy == "uniform":
            keys = hash_uniform(cand_gids, self.seed, step)
        else:
            keys = l1_error(predict, coords[rows], values[rows], self.cfg.score_chunk)
        # Sorted rows: the same order however the set was reached (fresh, or loaded from a checkpoint).
        rows = torch.sort(rows[global_topk(keys, cand_gids, k, self.comm)]).values
        self.cache[b] = (rows, k)
        return rows, k, True

    # Checkpointing: caches are saved as global ids, so any world size can load them (DESIGN.md sec. 1).
    def state_dict(self, gids: torch.Tensor) -> dict:
        return {"batches": {b: (gids[rows].cpu(), k) for b, (rows, k) in self.cache.items()}}

    def load_state_dicts(self, states: list[dict], gids: torch.Tensor) -> None:
        """Load the states saved by every rank of the earlier run; keep the points this rank owns."""
        order = torch.argsort(gids)
        sorted_gids = gids[order]
        merged: dict[int, tuple[list[torch.Tensor], int]] = {}
        for state in states:
            for b, (g, k) in state["batches"].items():
                merged.setdefault(int(b), ([], k))[0].append(g)
        self.cache = {}
        for b, (parts, k) in merged.items():
            g = torch.cat(parts).to(gids.device)
            pos = torch.searchsorted(sorted_gids, g).clamp(max=len(sorted_gids) - 1)
            mine = sorted_gids[pos] == g
            self.cache[b] = (torch.sort(order[pos[mine]]).values, k)
