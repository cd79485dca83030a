"""`train.precision`: what fp32, tf32 and bf16 mean for training, scoring and rendering.

- fp32: IEEE fp32 matmuls everywhere (TF32 explicitly off on GPUs).
- tf32: fp32 storage, TF32 tensor-core matmuls on GPUs (about 2.6x fp32 on an H200 for a 6x512 SIREN);
  on a CPU there is no TF32, so it runs as fp32.
- bf16: the training forward and backward of the hidden layers under torch.autocast(bf16); weights, Adam
  state and gradients' all-reduce stay fp32, and the SIREN's first layer runs in fp32 (model/siren.py).

DeepSpeed 0.19 runs `engine(...)` inside its own autocast context: without a `torch_autocast` section in
its config it switches an outer CUDA autocast *off*, so an autocast around `engine(...)` silently trained in
fp32. The bf16 switch therefore goes into DeepSpeed's config (docs/training.md, "Precision").
The teacher scores under the same autocast as training, never lower; evaluation and rendering run at fp32
(TF32 under tf32 and bf16), since the reconstruction is the product.
"""

from __future__ import annotations

import contextlib

import torch

from ..config import PRECISIONS


class Precision:
    def __init__(self, name: str, device: torch.device):
        assert name in PRECISIONS, name
        self.name, self.device = name, device

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def apply(self) -> None:
        """Set the process-wide matmul flags (GPUs only; CPUs have no TF32)."""
        if self.device.type == "cuda":
            tf32 = self.name != "fp32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32

    def deepspeed_config(self) -> dict:
        """The DeepSpeed config sections that make `engine(...)` run at this precision."""
        if not self.bf16:
            return {"bf16": {"enabled": False}}
        return {
            # Not DeepSpeed's bf16 mode: that casts weights and inputs, and bf16 coordinates (8-bit mantissa)
            # cannot tell neighbouring pixels apart. torch_autocast keeps fp32 weights and Adam state.
            "bf16": {"enabled": False},
            "torch_autocast": {
                "enabled": True,
                "dtype": "bfloat16",
                # No parameter is marked for a bf16 gradient all-reduce: gradients are reduced in fp32, so
                # an N-rank update stays equal to the 1-rank update to float tolerance.
                "lower_precision_safe_modules": [],
            },
        }

    def scoring(self) -> contextlib.AbstractContextManager:
        """The context the teacher scores in: the training precision."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)
