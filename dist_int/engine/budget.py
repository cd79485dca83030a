"""Refuse a run that cannot fit before it starts, with the numbers (docs/training.md, "Memory").

A field's memory is its parameters with their gradients and Adam moments, plus the activations of the
largest pass (model/field.py estimates them per field kind: a SIREN keeps every hidden layer's
pre-activation and sine output for the backward pass; a hash grid its corner rows and weights per level).
A mistyped width (model.hidden=100000), a hash table of 2^30 rows or a whole 1-Gpx batch in one pass would
otherwise fail minutes later inside DeepSpeed with an allocator error, or swap the machine to a halt.
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError
from ..model import FieldSpec

STATE_COPIES = 6  # weights, gradients, two Adam moments, and room for DeepSpeed's flat buffers
SAFETY = 0.9       # of the memory available


def available_bytes(device: torch.device, memory_gb: float) -> int:
    if memory_gb > 0:
        return int(memory_gb * 2**30)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(cfg, device: torch.device, spec: FieldSpec, train_points: int, nograd_points: int,
                 shard_bytes: int = 0) -> None:
    """Raise ConfigError when the estimate exceeds what the device has (or train.memory_gb).
    train_points: the most points one forward/backward pass takes; nograd_points: one scoring or
    evaluation pass."""
    state = spec.num_params * 4 * STATE_COPIES
    act = max(spec.activation_bytes(train_points, True), spec.activation_bytes(nograd_points, False))
    need, have = state + act + shard_bytes, available_bytes(device, cfg.train.memory_gb) * SAFETY
    if need <= have:
        return
    where = "train.memory_gb" if cfg.train.memory_gb > 0 else ("the GPU" if device.type == "cuda" else "this machine")
    if spec.kind == "hash":
        what = (f"the hash field ({spec.table_levels} levels, {spec.table_rows:,} table rows of "
                f"{cfg.model.features} features) and its optimizer")
        fix = "lower model.log2_table (or model.levels / model.features)"
    else:
        what = f"the {spec.layers}x{spec.hidden} SIREN and its optimizer"
        fix = "lower model.hidden"
    if state > have:  # the field alone does not fit: name the key to change
        key = f"model.log2_table={cfg.model.log2_table}" if spec.kind == "hash" else f"model.hidden={spec.hidden}"
        raise ConfigError(f"{key}: the field needs about {_gib(state)} for {what}, more than {where} offers "
                          f"({_gib(have / SAFETY)}); {fix}")
    raise ConfigError(
        f"this run needs about {_gib(need)} ({_gib(state)} for {what}"
        + (f", {_gib(act)} for the activations of {max(train_points, nograd_points):,} points in one pass"
           if act else "")
        + (f", {_gib(shard_bytes)} for the signal" if shard_bytes else "")
        + f"), more than {where} offers ({_gib(have / SAFETY)}); {fix}, set "
          f"train.max_points_per_pass (and teacher.score_chunk / train.eval_chunk), or use more ranks")
