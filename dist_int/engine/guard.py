"""Divergence guard: keeps the last good training state; when the PSNR on a fixed probe set
collapses or the loss stops being finite, it restores that state and lowers the learning rate.

The probe is a fixed random subset of the signal, not the teaching set: INT's teaching set is the worst
points of the moment, so its loss jumps by 10 dB or more whenever the teacher reselects.

Seen on an H200 with full-batch Adam at lr 1e-3 on a 512x512 RGB image: 34 dB fell to 10 dB and stayed.
Every rank decides from the same all-reduced numbers, so all ranks roll back together (docs/design.md,
"Ranks agree before they act").

An exact fit is not a divergence (docs/training.md, "Exact fits and NaN fields"). A field that holds its
signal exactly reaches a probe PSNR set by float rounding (170 dB and more, or +inf at zero error); from
there, Adam's normalized steps on vanishing gradients move it by tens of dB while it still renders the
source exactly, or nearly. So PSNRs are compared up to the data's own precision (`exact_db`, the PSNR of
an error spread over one step of the stored values): above that ceiling the field is at the precision
floor, not worse than its best. When the state to return to is itself at that ceiling, the run ends there
(AtPrecision), complete, instead of spending rollbacks on noise. A NaN field is always a divergence, also
with the PSNR check off (`train.divergence_db = 0`): then the run stops at once with the last good state,
kept at every log step.

Where the last good state is kept (engine/budget.py, guard_place; docs/training.md, "How the parts are
sized"): it is three copies of the parameters (weights and both Adam moments), 12 bytes a parameter, as
much as the rest of the field's training state. In memory where that is a small part of the budget; on a
GPU, in host memory; else in a file in the run folder, written at each snapshot and read back only on a
rollback. A rollback then restores the same numbers from any of the three places.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..jsonio import encode_float


class Diverged(RuntimeError):
    """The probe PSNR collapsed again after `train.max_rollbacks` rollbacks; the run stops with its last
    good state (a training outcome, reported in summary.json, not a user error)."""


class AtPrecision(RuntimeError):
    """The field had fit the signal at the data's own precision and a later step moved it away: the run
    ends there with that exact state, complete (nothing is left to gain; more steps only add noise)."""


@dataclass
class Snapshot:
    step: int
    level: float  # its probe PSNR, capped at exact_db (-inf: not measured)
    module: dict | None     # None: in the guard's file (`spill`)
    optimizer: dict | None
    scheduler: dict
    teacher_state: object  # the teacher's cached sets and error record (Teacher.rollback_state)


class DivergenceGuard:
    def __init__(self, engine, schedule, teacher, divergence_db: float, lr_factor: float, max_rollbacks: int,
                 exact_db: float = math.inf, place: str = "memory", spill: Path | None = None,
                 disk_every: int = 0):
        """exact_db: the probe PSNR at the data's precision (modality/base.py, exact_psnr_db), the ceiling
        of every comparison. place: where the last good state's weights and moments are kept, "memory"
        (beside the field), "host" (in host memory, for a field on a GPU) or "disk" (in the file `spill`,
        written at most every `disk_every` steps: a large field's state is hundreds of MB a rank)."""
        self.engine, self.schedule, self.teacher = engine, schedule, teacher
        self.divergence_db, self.lr_factor, self.max_rollbacks = divergence_db, lr_factor, max_rollbacks
        self.exact_db = exact_db
        self.best_db = -float("inf")  # the best probe PSNR seen, capped at exact_db
        self.rollbacks = 0
        self.snapshot: Snapshot | None = None
        self.place, self.spill, self.disk_every = place, spill, disk_every

    def _take(self, step: int, level: float = -math.inf) -> Snapshot:
        e = self.engine
        module, optimizer = e.module.state_dict(), e.optimizer.state_dict()
        if self.place == "disk":
            from ..files import replaced_when_done

            self.spill.parent.mkdir(parents=True, exist_ok=True)
            with replaced_when_done(self.spill) as tmp:  # a failed write leaves the last good file
                torch.save({"module": module, "optimizer": optimizer}, tmp)
            module = optimizer = None
        elif self.place == "host":
            module, optimizer = _to_host(module), _to_host(optimizer)
        else:
            module, optimizer = copy.deepcopy(module), copy.deepcopy(optimizer)
        return Snapshot(step, level, module, optimizer, copy.deepcopy(e.lr_scheduler.state_dict()),
                        self.teacher.rollback_state())

    def start(self, step: int) -> None:
        self.snapshot = self._take(step)

    def restore(self) -> int:
        s, e = self.snapshot, self.engine
        if s.module is None:  # kept on disk
            saved = torch.load(self.spill, map_location="cpu", weights_only=True)
            module, optimizer = saved["module"], saved["optimizer"]
        else:
            module, optimizer = s.module, copy.deepcopy(s.optimizer)
        e.module.load_state_dict(module)  # copies into the field's own tensors, on its device
        e.optimizer.load_state_dict(optimizer)  # casts to the parameters' device
        e.lr_scheduler.load_state_dict(s.scheduler)
        # The optimizer state carries the old, unscaled lr: set this step's lr from the lowered curve.
        for group, base in zip(e.optimizer.param_groups, e.lr_scheduler.base_lrs):
            group["lr"] = base * self.schedule(e.lr_scheduler.last_epoch)
        self.teacher.restore_rollback_state(s.teacher_state)
        return s.step

    def close(self) -> None:
        """The run is over: the file of a state kept on disk goes."""
        if self.spill is not None:
            from ..files import discard

            discard(self.spill)
            discard(self.spill.with_name(f".{self.spill.name}.tmp"))  # a write cut short (files.replaced_when_done)
            try:
                self.spill.parent.rmdir()  # the last rank's file gone: the folder goes too
            except OSError:
                pass

    # The snapshot is not saved: a resumed run starts from the checkpoint, its first good state.
    def state_dict(self) -> dict:
        # "-inf" for "none yet" (strict JSON has no infinities; meta.json must open in any JSON reader).
        return {"rollbacks": self.rollbacks, "best_db": encode_float(self.best_db)}

    def load_state_dict(self, state: dict) -> None:
        best = state["best_db"]  # None: written before non-finite numbers were kept by name
        self.rollbacks, self.best_db = int(state["rollbacks"]), -math.inf if best is None else float(best)

    def check(self, step: int, mean_loss: float, probe_psnr: float) -> int | None:
        """Called at log steps with the global mean training loss and the probe PSNR (the same on every
        rank). Returns the step to continue from after a rollback, or None. Raises Diverged when no
        rollback is left, or at once for a NaN field when the PSNR check is off."""
        broken = not math.isfinite(mean_loss) or math.isnan(probe_psnr)
        level = min(probe_psnr, self.exact_db)  # +inf (zero error) and float rounding: the precision floor
        checking = self.divergence_db > 0
        if broken or (checking and level < self.best_db - self.divergence_db):
            what = (f"the training loss is {mean_loss} at step {step}" if not math.isfinite(mean_loss) else
                    f"probe PSNR {probe_psnr:.2f} dB at step {step} (best {self.best_db:.2f} dB)")
            if not broken and self.snapshot is not None and self.snapshot.level >= self.exact_db:
                raise AtPrecision(f"{what}; the state of step {self.snapshot.step} fits the signal at the data's "
                                  f"precision (probe PSNR at least {self.exact_db:.2f} dB)")
            if not checking:
                raise Diverged(f"{what}; train.divergence_db = 0 allows no rollback")
            if self.snapshot is None or self.rollbacks >= self.max_rollbacks:
                raise Diverged(f"{what} after {self.rollbacks} rollback(s)")
            self.rollbacks += 1
            self.schedule.scale *= self.lr_factor
            return self.restore()
        self.best_db = max(self.best_db, level)
        # Only states near the best are "good": a slow collapse must not become the rollback target. With
        # the PSNR check off, every finite state is good (the target if the field turns NaN).
        recent = self.place == "disk" and self.snapshot is not None and \
            step - self.snapshot.step < self.disk_every  # a state on disk is rewritten less often
        if (not checking or level >= self.best_db - self.divergence_db / 2) and not recent:
            self.snapshot = self._take(step, level)
        return None


def _to_host(state):
    """A copy of a state dict with every tensor in host memory (a GPU field's rollback state)."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _to_host(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_host(v) for v in state)
    return copy.deepcopy(state)
