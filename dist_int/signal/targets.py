"""The values the SIREN is trained on, and the way back to the source's [0, 1] range.

The store keeps the source's values and their range; the reader maps them to [0, 1]. Training targets are
that affine-mapped once more, to [-1, 1] by default: SIREN's last layer is a plain linear layer initialized
around 0, and centring the targets on 0 measured 7.4 dB better at the paper's image setting than the INT
authors' [0, 1] (docs/training.md, "Target range"). PSNR is always computed on [0, 1], so numbers from
either choice compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

RANGES = {"symmetric": (-1.0, 1.0), "unit": (0.0, 1.0)}


@dataclass(frozen=True)
class TargetRange:
    lo: float
    hi: float

    @staticmethod
    def named(name: str) -> "TargetRange":
        return TargetRange(*RANGES[name])

    @property
    def span(self) -> float:
        return self.hi - self.lo

    def encode(self, unit: torch.Tensor) -> torch.Tensor:
        """[0, 1] values -> training targets."""
        return unit * self.span + self.lo if (self.lo, self.hi) != (0.0, 1.0) else unit

    def decode(self, pred: torch.Tensor) -> torch.Tensor:
        """Predictions -> [0, 1], clamped to the signal's range (as the paper's PSNR clamps)."""
        return (pred.float().clamp(self.lo, self.hi) - self.lo) / self.span

    def squared_error_unit(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum of squared errors on the [0, 1] scale, float64, from predictions and targets in training
        units (clamped predictions; one division instead of decoding both sides)."""
        diff = pred.float().clamp(self.lo, self.hi) - target
        return diff.double().square().sum() / (self.span * self.span)
