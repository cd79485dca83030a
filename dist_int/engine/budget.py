"""Refuse a run that cannot fit before it starts, with the numbers (docs/training.md, "Memory").

A SIREN's memory is its parameters with their gradients and Adam moments, plus the activations of the
largest pass: every hidden layer keeps its pre-activation and sine output for the backward pass, and the
gradient of each. A mistyped width (model.hidden=100000) or a whole 1-Gpx batch in one pass would
otherwise fail minutes later inside DeepSpeed with an allocator error, or swap the machine to a halt.
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError

STATE_COPIES = 6  # weights, gradients, two Adam moments, and room for DeepSpeed's flat buffers
TRAIN_TENSORS = 5  # per hidden layer and point: pre-activation, sine output, its derivative, gradients
SAFETY = 0.9       # of the memory available


def available_bytes(device: torch.device, memory_gb: float) -> int:
    if memory_gb > 0:
        return int(memory_gb * 2**30)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def siren_params(d_in: int, d_out: int, hidden: int, layers: int) -> int:
    return d_in * hidden + hidden + (layers - 2) * (hidden * hidden + hidden) + hidden * d_out + d_out


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(cfg, device: torch.device, d_in: int, d_out: int, train_points: int, nograd_points: int,
                 shard_bytes: int = 0) -> None:
    """Raise ConfigError when the estimate exceeds what the device has (or train.memory_gb).
    train_points: the most points one forward/backward pass takes; nograd_points: one scoring or
    evaluation pass."""
    hidden, layers = cfg.model.hidden, cfg.model.layers
    state = siren_params(d_in, d_out, hidden, layers) * 4 * STATE_COPIES
    act = hidden * 4 * max(train_points * (layers - 1) * TRAIN_TENSORS, nograd_points * 2)
    need, have = state + act + shard_bytes, available_bytes(device, cfg.train.memory_gb) * SAFETY
    if need > have:
        where = "train.memory_gb" if cfg.train.memory_gb > 0 else ("the GPU" if device.type == "cuda" else "this machine")
        raise ConfigError(
            f"this run needs about {_gib(need)} ({_gib(state)} for the {layers}x{hidden} SIREN and its optimizer"
            + (f", {_gib(act)} for the activations of {max(train_points, nograd_points):,} points in one pass"
               if act else "")
            + (f", {_gib(shard_bytes)} for the signal" if shard_bytes else "")
            + f"), more than {where} offers ({_gib(have / SAFETY)}); lower model.hidden, set "
              f"train.max_points_per_pass (and teacher.score_chunk / train.eval_chunk), or use more ranks")
