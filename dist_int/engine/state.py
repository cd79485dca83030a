"""What a run carries between steps besides the model, optimizer and teacher, checkpointed with them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..jsonio import encode_float


@dataclass
class RunState:
    step: int = 0
    train_time_s: float = 0.0
    """Training wall time only: evaluation, checkpoints and rendering are not counted."""
    select_time_s: float = 0.0
    """The part of train_time_s the teacher spent choosing teaching sets (scoring and selection)."""
    best_psnr_db: float = -float("inf")
    best_step: int = 0
    ended: str = ""
    """Why training ended before train.steps: "precision" (the field fit the signal at the data's precision;
    engine/guard.py) or "diverged"; "" while it trains. A rerun then only finishes the outputs."""

    def state_dict(self) -> dict:
        # A non-finite number ("-inf": no best PSNR yet; "inf": an exact fit) is written as its name: strict
        # JSON has no infinities (dist_int/jsonio.py), and None would read back as "none yet".
        return {k: encode_float(v) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            default = getattr(type(self), key)
            # None: a checkpoint written before non-finite numbers were kept by name
            setattr(self, key, default if value is None else type(default)(value))
