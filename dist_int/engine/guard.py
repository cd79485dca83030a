"""Divergence guard: keeps the last good training state in memory; when the PSNR on a fixed probe set
collapses or the loss stops being finite, it restores that state and lowers the learning rate.

The probe is a fixed random subset of the signal, not the teaching set: INT's teaching set is the worst
points of the moment, so its loss jumps by 10 dB or more whenever the teacher reselects.

Seen on an H200 with full-batch Adam at lr 1e-3 on a 512x512 RGB image: 34 dB fell to 10 dB and stayed.
Every rank decides from the same all-reduced numbers, so all ranks roll back together (docs/design.md,
"Ranks agree before they act").
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass


class Diverged(RuntimeError):
    """The probe PSNR collapsed again after `train.max_rollbacks` rollbacks; the run stops with its last
    good state (a training outcome, reported in summary.json, not a user error)."""


@dataclass
class Snapshot:
    step: int
    module: dict
    optimizer: dict
    scheduler: dict
    teacher_cache: dict


class DivergenceGuard:
    def __init__(self, engine, schedule, teacher, divergence_db: float, lr_factor: float, max_rollbacks: int):
        self.engine, self.schedule, self.teacher = engine, schedule, teacher
        self.divergence_db, self.lr_factor, self.max_rollbacks = divergence_db, lr_factor, max_rollbacks
        self.best_db = -float("inf")
        self.rollbacks = 0
        self.snapshot: Snapshot | None = None

    def _take(self, step: int) -> Snapshot:
        e = self.engine
        return Snapshot(step, copy.deepcopy(e.module.state_dict()), copy.deepcopy(e.optimizer.state_dict()),
                        copy.deepcopy(e.lr_scheduler.state_dict()), dict(self.teacher.cache))

    def start(self, step: int) -> None:
        self.snapshot = self._take(step)

    def restore(self) -> int:
        s, e = self.snapshot, self.engine
        e.module.load_state_dict(s.module)
        e.optimizer.load_state_dict(copy.deepcopy(s.optimizer))
        e.lr_scheduler.load_state_dict(s.scheduler)
        # The optimizer state carries the old, unscaled lr: set this step's lr from the lowered curve.
        for group, base in zip(e.optimizer.param_groups, e.lr_scheduler.base_lrs):
            group["lr"] = base * self.schedule(e.lr_scheduler.last_epoch)
        self.teacher.restore_cache(s.teacher_cache)
        return s.step

    # The in-memory snapshot is not saved: a resumed run starts from the checkpoint, its first good state.
    def state_dict(self) -> dict:
        # None for "none yet" (-inf is not JSON; meta.json must open in any JSON reader).
        return {"rollbacks": self.rollbacks, "best_db": self.best_db if math.isfinite(self.best_db) else None}

    def load_state_dict(self, state: dict) -> None:
        best = state["best_db"]
        self.rollbacks, self.best_db = int(state["rollbacks"]), -math.inf if best is None else float(best)

    def check(self, step: int, mean_loss: float, probe_psnr: float) -> int | None:
        """Called at log steps with the global mean training loss and the probe PSNR (the same on every
        rank). Returns the step to continue from after a rollback, or None. Raises Diverged when no
        rollback is left."""
        psnr = probe_psnr if math.isfinite(mean_loss) else float("nan")
        if self.divergence_db <= 0:
            return None
        if not math.isfinite(psnr) or psnr < self.best_db - self.divergence_db:
            if self.snapshot is None or self.rollbacks >= self.max_rollbacks:
                raise Diverged(f"probe PSNR {psnr:.2f} dB at step {step} (best {self.best_db:.2f} dB) "
                               f"after {self.rollbacks} rollback(s)")
            self.rollbacks += 1
            self.schedule.scale *= self.lr_factor
            return self.restore()
        self.best_db = max(self.best_db, psnr)
        # Only states near the best are "good": a slow collapse must not become the rollback target.
        if psnr >= self.best_db - self.divergence_db / 2:
            self.snapshot = self._take(step)
        return None
