"""Wrap the SIREN in a DeepSpeed engine whose config is generated from ours."""

from __future__ import annotations

import logging
import math

import torch

from ..config import Config


def deepspeed_config(cfg: Config) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,  # we feed our own point batches; DeepSpeed never batches
        "gradient_accumulation_steps": 1,
        "steps_per_print": 1 << 30,
        "optimizer": {
            "type": "Adam",
            "params": {
                "lr": cfg.optim.lr,
                "betas": [cfg.optim.beta1, cfg.optim.beta2],
                "eps": cfg.optim.eps,
                "weight_decay": 0.0,
                "adam_w_mode": False,  # "Adam" means AdamW in DeepSpeed unless told (NOTES.md)
                "torch_adam": cfg.train.torch_adam,
            },
        },
        # Explicit: DeepSpeed >= 0.19.3 clips at 1.0 by default (NOTES.md). 0 = off.
        "gradient_clipping": cfg.optim.grad_clip,
        "bf16": {"enabled": cfg.train.bf16},
        "zero_optimization": {"stage": 0},  # stage 0 checkpoints load on any world size
    }


def cosine_lr(total_steps: int, lr: float, lr_min: float):
    """Cosine annealing from lr to lr_min over the run (INT_REFERENCE: SIREN settings), as a LambdaLR factor."""
    def factor(step: int) -> float:
        frac = min(step, total_steps) / total_steps
        return (lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * frac))) / lr
    return factor


def build_engine(model: torch.nn.Module, cfg: Config):
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=deepspeed_config(cfg),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
            opt, cosine_lr(cfg.train.steps, cfg.optim.lr, cfg.optim.lr_min)),
    )
    return engine
