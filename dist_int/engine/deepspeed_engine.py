"""Wrap the SIREN in a DeepSpeed engine whose config is generated from ours (docs/training.md, "DeepSpeed")."""

from __future__ import annotations

import logging
import math

import torch

from ..config import Config
from ..errors import InstallError
from .precision import Precision


def deepspeed_config(cfg: Config, precision: Precision) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 1,  # we feed our own point batches; DeepSpeed never batches
        "gradient_accumulation_steps": 1,
        # We own the accumulation boundary: backward() only accumulates gradients (a step's teaching set
        # may go through in several pieces, engine/step.py) and step() all-reduces them once and updates.
        "managed_gradient_accumulation": False,
        "steps_per_print": 1 << 30,
        # DeepSpeed's throughput timer synchronizes the device at every step by default; we time the run
        # ourselves at log steps, so switch it off (the documented `timers` section).
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
        "wall_clock_breakdown": False,
        "optimizer": {
            "type": "Adam",
            "params": {
                "lr": cfg.optim.lr,
                "betas": [cfg.optim.beta1, cfg.optim.beta2],
                "eps": cfg.optim.eps,
                "weight_decay": 0.0,
                "adam_w_mode": False,  # "Adam" means AdamW in DeepSpeed unless told
                "torch_adam": cfg.train.torch_adam,
                # torch's fused Adam: one pass over each parameter, no temporaries. The default (one op per
                # term, per tensor) made two fresh copies of every parameter per step: on a CPU, 5x slower
                # for a 2^19-row hash table (docs/training.md, "Fused Adam"). DeepSpeed hands this key on to
                # torch.optim.Adam as it is; a checkpoint load keeps it (restore_fused).
                **({"fused": True} if cfg.train.torch_adam else {}),
            },
        },
        # Off in DeepSpeed (whose default since 0.19.3 is 1.0): its clipping builds small tensors on the
        # device at every step, each a host-device sync. We clip in an optimizer pre-hook instead (below).
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": 0},  # stage 0 checkpoints load on any world size
        **precision.deepspeed_config(),
    }


class CosineLR:
    """Cosine annealing from lr to lr_min over the run (INT's SIREN setting, docs/method.md), as a LambdaLR
    factor. `scale` lowers the whole curve after a divergence rollback."""

    def __init__(self, total_steps: int, lr: float, lr_min: float):
        self.total_steps, self.lr, self.lr_min = total_steps, lr, lr_min
        self.scale = 1.0

    def __call__(self, step: int) -> float:
        frac = min(step, self.total_steps) / self.total_steps
        return self.scale * (self.lr_min + (self.lr - self.lr_min) * 0.5 * (1 + math.cos(math.pi * frac))) / self.lr

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])


MIN_DEEPSPEED = "0.19.3"  # the first release whose config sections below all take effect (docs/training.md)


def check_engine(engine, precision: Precision) -> None:
    """Refuse a DeepSpeed that ignored a config section the training depends on: an older release accepts
    unknown sections silently, and then bf16 would be off, gradients all-reduced per piece, and a
    device-side clipping run at every step."""
    import deepspeed

    want = {"managed_gradient_accumulation": False, "torch_autocast_enabled": precision.bf16,
            "gradient_clipping": 0.0}
    wrong = []
    for name, expect in want.items():
        got = getattr(engine, name, None)
        got = got() if callable(got) else got
        if got != expect:
            wrong.append(f"{name} is {got!r}, not {expect!r}")
    if precision.bf16 and getattr(engine, "torch_autocast_dtype", lambda: None)() != torch.bfloat16:
        wrong.append("torch_autocast dtype is not bfloat16")
    if wrong:
        raise InstallError(f"DeepSpeed {deepspeed.__version__} did not take the config dist_int gave it "
                           f"({'; '.join(wrong)}); dist_int needs deepspeed>={MIN_DEEPSPEED}: "
                           f"pip install 'deepspeed>={MIN_DEEPSPEED}'")


def optimizer_groups(model: torch.nn.Module) -> list[dict]:
    """The field's parameter groups: a hash field's tables carry the paper's own Adam settings (model/hash.py,
    TABLE_ADAM) and the rest takes the config's; a plain module is one group."""
    return getattr(model, "optimizer_groups", lambda: [{"params": list(model.parameters())}])()


def restore_fused(optimizer) -> None:
    """Keep torch's fused Adam after a checkpoint load. torch's load_state_dict restores each group's saved
    settings, so a checkpoint written before dist_int asked for the fused form (docs/training.md, "Fused
    Adam") would bring back `fused=None` and the slow form. The fused step also wants each parameter's step
    counter as a float32 tensor on the parameter's device (the default form keeps it on the host)."""
    if not isinstance(optimizer, torch.optim.Adam) or not optimizer.defaults.get("fused"):
        return
    for group in optimizer.param_groups:
        if group.get("fused"):
            continue
        group["fused"], group["foreach"] = True, None
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device)


def build_engine(model: torch.nn.Module, cfg: Config, precision: Precision | None = None):
    """Returns (engine, its CosineLR)."""
    import deepspeed

    precision = precision or Precision("fp32", next(model.parameters()).device)
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    schedule = CosineLR(cfg.train.steps, cfg.optim.lr, cfg.optim.lr_min)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=optimizer_groups(model),
        config=deepspeed_config(cfg, precision),
        # A plain lambda, so LambdaLR's state_dict does not save (and a load does not overwrite) the
        # schedule's own fields: scale and length come from our config and run state.
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step)),
    )
    check_engine(engine, precision)
    if cfg.optim.grad_clip > 0:
        # Runs inside engine.step(), after the gradient all-reduce and before the update: the global
        # gradient is clipped, all on the device (the norm is never read on the host).
        params = [p for p in model.parameters() if p.requires_grad]
        clip = cfg.optim.grad_clip

        def clip_before_update(optimizer, args, kwargs):
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)

        engine.optimizer.register_step_pre_hook(clip_before_update)
    if cfg.train.compile:
        # DeepSpeed's documented entry point; it compiles engine.module in place, so the teacher's and the
        # renderer's forward passes run compiled too. Dynamic: the teaching set's size changes every
        # selection, and a recompilation per size would cost more than it saves.
        engine.compile(compile_kwargs={"dynamic": True})
    return engine, schedule
