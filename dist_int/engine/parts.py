"""The named parts of one run: built once by the trainer (engine/trainer.py, `_train`, in the order of the
data flow: signal -> field and engine -> teacher -> evaluation, guard, step, checkpoints), then handed
whole to the loop (engine/loop.py) and to the outputs (engine/finish.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..comm import Comm
from ..config import Config
from ..model import FieldSpec
from ..rundir import RunDir
from ..signal import SignalStore


@dataclass
class Parts:
    cfg: Config          # with the parts sized to the budget (engine/sizing.py)
    comm: Comm
    run: RunDir
    store: SignalStore
    shard: object        # signal.Shard: this rank's chunks, resident or streamed
    plan: object         # teacher.BatchPlan
    spec: FieldSpec
    engine: object       # DeepSpeed's engine around the field
    schedule: object     # the learning-rate curve (engine/deepspeed_engine.py)
    score: Callable[[torch.Tensor], torch.Tensor]    # the teacher's forward, at the training precision
    predict: Callable[[torch.Tensor], torch.Tensor]  # evaluation and rendering, fp32 / TF32
    teacher: object
    evaluator: object
    guard: object        # engine/guard.py
    train_step: object   # engine/step.py
    state: object        # engine/state.py, RunState
    ckpt: object         # engine/checkpoint.py
    log: object          # progress.Progress
    watchdog: object     # engine/watchdog.py
