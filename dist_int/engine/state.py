"""What a run carries between steps besides the model, optimizer and teacher, checkpointed with them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class RunState:
    step: int = 0
    train_time_s: float = 0.0
    """Training wall time only: evaluation, checkpoints and rendering are not counted."""
    select_time_s: float = 0.0
    """The part of train_time_s the teacher spent choosing teaching sets (scoring and selection)."""
    best_psnr_db: float = -float("inf")
    best_step: int = 0

    def state_dict(self) -> dict:
        # None stands for a non-finite number (no best PSNR yet): -inf is not JSON.
        return {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in asdict(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            default = getattr(type(self), key)
            setattr(self, key, default if value is None else type(default)(value))
