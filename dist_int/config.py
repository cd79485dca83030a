"""Configuration: nested dataclasses, loaded from TOML, with dotted `key=value` overrides.

Every field has a default and a docstring-style comment with its unit or reason. Unknown keys and
out-of-range values raise `ConfigError` before any training starts.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


from .errors import ConfigError

RATIO_SCHEDULES = ("constant", "step", "linear", "cosine", "reverse-cosine")
INTERVAL_SCHEDULES = ("dense", "incremental", "step-incremental", "decremental")
STRATEGIES = ("full", "uniform", "int", "mix", "soft", "replay")
SCORING_STRATEGIES = ("int", "mix", "soft")  # the teachers that score every candidate by its error
ACTIVATIONS = ("relu", "sine")
ENCODINGS = ("auto", "torch", "triton")  # model.encoding (model/hash.py)
PRECISIONS = ("fp32", "tf32", "bf16")
TARGET_RANGES = ("symmetric", "unit")
# The largest value each number may take. Counts and sizes decide loops and allocations before any memory
# check can weigh them (model.levels = 10^8 built lists for a minute before failing, 2^63 - 1 hung), so
# each has a bound far beyond any real use; None: any finite number (rates and factors whose extremes
# are a training outcome, reported as such, not a hang). tests/test_config.py checks that every numeric
# key is here.
LIMITS: dict[str, float | None] = {
    "seed": 2**63 - 1,
    "signal.points": 2**31, "signal.chunk": 2**31,
    "model.hidden": 2**16, "model.layers": 1024, "model.w0": None, "model.w0_first": None, "model.levels": 64,
    "model.features": 64, "model.log2_table": 30, "model.base_resolution": 2**31, "model.finest_resolution": 2**40,
    "model.growth": 1e6,
    "teacher.mix_topk": 1.0, "teacher.temperature": 1e6, "teacher.ratio": 1.0, "teacher.replay_uniform": 1.0,
    "teacher.importance": 1.0, "teacher.num_batches": 2**40,
    "teacher.batch_points": 2**48, "teacher.window_points": 2**48, "teacher.score_chunk": 2**31,
    "optim.lr": None, "optim.lr_min": None, "optim.beta1": 1.0, "optim.beta2": 1.0, "optim.eps": None,
    "optim.grad_clip": None,
    "train.steps": 2**40, "train.log_every": 2**40, "train.eval_every": 2**40, "train.eval_chunk": 2**31,
    "train.max_points_per_pass": 2**40, "train.memory_mb": 2**30, "train.timeout_s": 7 * 24 * 3600,
    "train.divergence_db": 1000.0, "train.probe_points": 2**31, "train.rollback_lr_factor": 1.0,
    "train.max_rollbacks": 1000, "train.snapshot_every": 2**40, "train.progress_every_s": 7 * 24 * 3600,
    "checkpoint.every": 2**40, "checkpoint.keep": 10000,
}
# Keys that were renamed: an old config gets told the new spelling instead of a list of every key.
RENAMED_KEYS = {
    "train.bf16": 'train.precision = "bf16" (or "fp32" / "tf32")',
    "signal.cache_mb": "train.memory_mb (one budget for all a rank holds: signal, teacher, field, passes, buffers)",
    "train.memory_gb": "train.memory_mb (one budget for all a rank holds, in MiB)",
    "teacher.batches": 'teacher.window_points (batches are stratified within windows of chunks, and a window is '
                       'what a streamed shard holds; teacher.batches = "chunks" is teacher.window_points = the '
                       'signal\'s points / teacher.num_batches)',
}


@dataclass
class RunConfig:
    dir: str = "runs/default"
    """Run folder: resolved config, metrics.jsonl, summary.json, reconstruction, checkpoints."""
    resume: bool = True
    """Resume from the latest checkpoint in `dir` when there is one."""
    allow_config_change: bool = False
    """Resume a run folder whose saved config differs from this one (otherwise refused)."""


@dataclass
class SignalConfig:
    path: str = "builtin:camera"
    """Zarr store, image file (PNG/JPEG/TIFF/BigTIFF/OME-TIFF), or builtin:camera / builtin:astronaut."""
    kind: str = "auto"
    """image, audio, volume, video or shape; auto tells by the file (audio/video/mesh suffixes, TIFF and Zarr
    axes)."""
    points: int = 100000
    """Shapes: signed-distance samples drawn from the mesh into the point table (half coarse, half fine)."""
    sdf: str = "auto"
    """Shapes: auto (exact inside/outside for watertight meshes, the nearest triangle's side otherwise) or
    watertight (refuse a mesh that is not)."""
    chunk: int | list[int] = 0
    """Chunk edges when a source is ingested: 0 = the modality's default (image 128^2, audio 65536 samples,
    volume 32^3, video 8x128x128 frames x rows x columns), one edge for every axis, or a list, one per
    axis. Chunks are the unit of sharding; an edge larger than the signal is cut to it."""
    allow_large_image: bool = False
    """Read PNG/JPEG files beyond Pillow's decompression-bomb limit (~179 M pixels), with a warning; they
    are decoded whole into memory. Tiled TIFFs are read lazily at any size."""
    value_range: str | list[float] = "data"
    """The values that map to [0, 1] (PSNR is on this range; summary.json names it): data = the data's own
    min and max, found exactly at ingest over all ranks (audio: its full scale; shapes: the signed
    distances' [-2, 2]); dtype = the integer dtype's full range (e.g. -32768..32767 for int16); or [lo, hi]
    in the source's units, which must cover the data."""
    target_range: str = "symmetric"
    """Values the SIREN is trained on: symmetric = [-1, 1] (SIREN's own code; its output layer is centred
    on 0, measured 7.4 dB better, docs/training.md), unit = [0, 1] (the INT authors' protocol). PSNR is
    always reported on the source's range mapped to [0, 1]."""


@dataclass
class ModelConfig:
    kind: str = "siren"
    """The field: siren (the INT paper's SIREN) or hash (a multiresolution hash grid and a small MLP,
    instant-ngp; the capacity a gigapixel signal needs, docs/fields.md)."""
    hidden: int = 0
    """Width of every hidden layer (SIREN, or the hash field's MLP); 0 = the field's default (siren 256,
    hash 64)."""
    layers: int = 0
    """Linear layers in all, as the paper counts them (6 = 5 sine layers + 1 linear output; the hash MLP:
    3 = 2 hidden + output); 0 = the field's default (siren 6, hash 3)."""
    w0: float = 30.0
    """Frequency of the hidden sine layers (SIREN sec. 3.2; the hash MLP's with activation = "sine")."""
    w0_first: float = 30.0
    """Frequency of the SIREN's first sine layer."""
    activation: str = "relu"
    """hash: the MLP's activation, relu (instant-ngp's) or sine (with model.w0)."""
    levels: int = 16
    """hash: resolution levels (the paper's L)."""
    features: int = 2
    """hash: features per level and vertex (the paper's F)."""
    log2_table: int = 18
    """hash: log2 of the rows per level's table (the paper's T = 2^14..2^24); coarse levels with fewer
    vertices are stored densely, finer ones hashed into the table."""
    base_resolution: int = 16
    """hash: cells per axis on the coarsest level (the paper's N_min)."""
    finest_resolution: int = 0
    """hash: cells per axis on the finest level (N_max); 0 = the signal's sample count along its longest
    axis (point tables: 1024). Every level is capped per axis at the signal's sample spacing."""
    growth: float = 0.0
    """hash: resolution factor between levels; 0 = from base and finest (the paper's b)."""
    encoding: str = "auto"
    """hash: how the encoding runs: auto (fused Triton kernels on CUDA devices, the torch ops on CPUs),
    torch (the ops everywhere) or triton (the kernels; on a CPU only under TRITON_INTERPRET=1, for tests;
    model/hash_triton.py)."""


@dataclass
class TeacherConfig:
    strategy: str = "soft"
    """full (every candidate), uniform (random subset, same schedules), int (top-k error, the paper's), mix
    (mix_topk of the budget by top-k error, the rest uniform), soft (sampling in proportion to
    error^(1/temperature)) or replay (soft's sampling on the errors the training steps observed: no scoring
    pass; teacher/record.py). soft is the default by measurement (bench/results/teachers.md, docs/method.md)."""
    mix_topk: float = 0.3
    """mix: the fraction of the budget taken by the top-k error; the rest is drawn uniformly."""
    temperature: float = 1.0
    """soft, replay: sampling probability proportional to error^(1/temperature); lower is closer to top-k."""
    replay_uniform: float = 0.0
    """replay: the fraction of the budget drawn uniformly at random instead of by the error record, so that
    the records of points left out for long are measured again (0: the sampling alone revisits them)."""
    importance: float = 0.0
    """soft, replay: importance weights 1 / q^importance for the selected points' losses (q: a point's
    sampling weight, error^(1/temperature)), normalized to mean 1 over the teaching set; 0 turns them off,
    1 is soft mining's full correction of the sampling's bias."""
    ratio: float = 0.2
    """r0: fraction of the candidates selected at the start of training, in (0, 1]."""
    ratio_schedule: str = "step"
    """How the ratio grows from r0: constant, step, linear, cosine, reverse-cosine."""
    interval_schedule: str = "step-incremental"
    """How often selection reruns: dense, incremental (the authors' code), step-incremental (the paper's
    appendix: 10 phases with intervals 1, 11 ... 91; the default by measurement with soft, docs/method.md),
    decremental."""
    num_batches: int = 1
    """Mini-batches per epoch; 1 = whole-signal INT. >1: each chunk is cut into this many groups."""
    batch_points: int = 0
    """Mini-batches of about this many points instead: num_batches = ceil(signal points / batch_points),
    so one setting fits signals of any size (configs/hash.toml). 0: use num_batches."""
    window_points: int = 0
    """Windows of about this many points (over all ranks): each epoch deals the chunks into windows of
    random chunks and cuts each window into stratified batches (every batch samples every chunk of its
    window). A window is the unit of streaming: a rank whose shard does not fit train.memory_mb holds one
    window (and the next, read ahead) at a time. 0: one window, every batch samples every chunk of the
    signal. The same for any number of ranks, streamed or not (docs/design.md, "Streaming shards")."""
    score_chunk: int = 262144
    """Points per forward pass while the teacher scores candidates (no gradients); bounds scoring memory.
    As large as train.eval_chunk, so the memory check's largest no-grad pass is unchanged; a GPU step that
    scores in fewer pieces launches fewer kernels (docs/training.md, "Selecting steps on a GPU")."""


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate of Adam (not AdamW)."""
    lr_min: float = 1e-6
    """Floor of the cosine annealing, reached at the last step."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0
    """Gradient-norm clipping; 0 turns it off (the paper clips at 0.1 in the mini-batch run only)."""


@dataclass
class TrainConfig:
    steps: int = 5000
    """Optimizer steps in all (mini-batch mode: epochs * teacher.num_batches)."""
    log_every: int = 50
    """Steps between metrics.jsonl lines and progress updates."""
    eval_every: int = 500
    """Steps between exact whole-signal PSNR evaluations (0: only at the end)."""
    eval_chunk: int = 262144
    """Points per forward pass while evaluating and rendering (no gradients); bounds their memory."""
    precision: str = "tf32"
    """fp32, tf32 (fp32 storage, TF32 matmuls on GPUs; the same as fp32 on CPUs) or bf16 (the hidden
    layers' forward and backward under bf16 autocast; fp32 weights, Adam state and first layer).
    docs/training.md has the measured speed and PSNR of each."""
    max_points_per_pass: int = 0
    """Most points in one forward/backward pass; a larger teaching set is split into pieces whose
    gradients are accumulated into the same update (bounds activation memory). 0: one pass."""
    memory_mb: float = 0.0
    """The memory a rank may use beyond a constant (Python, torch, DeepSpeed), MiB: the field and its
    optimizer state, one pass's activations, the teacher's state, the signal (resident when the shard fits
    what is left, else streamed a window at a time), render and export buffers. Checked at start-up with
    the numbers. 0: this machine's memory (or the GPU's) shared by the ranks on it."""
    compile: bool = False
    """Run the SIREN under torch.compile (dynamic shapes, since teaching-set sizes change); the first
    steps pay for the compilation."""
    torch_adam: bool = True
    """Use torch.optim.Adam; false lets DeepSpeed build FusedAdam (needs a CUDA toolchain)."""
    timeout_s: float = 600.0
    """Collective timeout: a rank that dies ends the whole job after about this long."""
    divergence_db: float = 10.0
    """A probe PSNR this many dB below the best seen (or a non-finite loss) is a divergence: roll back to
    the last good state and lower the learning rate. 0 turns the check off."""
    probe_points: int = 16384
    """Size of the fixed random probe set (all ranks together) whose PSNR the divergence guard watches at
    log steps. A fixed set, because the teaching set's own loss jumps whenever INT reselects."""
    rollback_lr_factor: float = 0.5
    """Learning-rate multiplier applied at each rollback."""
    max_rollbacks: int = 5
    """Rollbacks allowed before the run stops as diverged."""
    snapshot_every: int = 0
    """Steps between teaching-set snapshots (snapshots/step-N/, one file per rank: selected points per
    cell of a bounded grid), drawn by `python -m dist_int report`. 0: none."""
    progress_every_s: float = 30.0
    """Without a terminal (SLURM, CI, a log file): seconds between plain progress lines. On a terminal a
    bar updates instead."""
    sync_census: bool = False
    """Diagnostics: count, per step, the operations that would make the host wait for a GPU (device reads,
    data-dependent sizes, pageable copies; dist_int/census.py) and write them to census/rank-N.jsonl in the
    run folder. Works on any device; slows every step."""
    tensorboard: bool = False
    """Also write the logged scalars as TensorBoard events into <run.dir>/tensorboard (needs the
    `tensorboard` package: pip install tensorboard)."""


@dataclass
class CheckpointConfig:
    every: int = 1000
    """Steps between checkpoints (0: only when stopped by a signal and at the end)."""
    keep: int = 2
    """Checkpoints kept; older ones are deleted once a newer one is complete."""


@dataclass
class RenderConfig:
    format: str = "auto"
    """Picture exported beside the OME-Zarr pyramid (reconstruction.zarr, always written): png, tiff (tiled
    pyramidal BigTIFF), zarr (the pyramid only) or auto (PNG for 8/16-bit images up to 8192^2 pixels,
    else the pyramid only)."""


@dataclass
class Config:
    seed: int = 0
    """Seeds model init, shard assignment, mini-batches and uniform selection."""
    run: RunConfig = field(default_factory=RunConfig)
    signal: SignalConfig = field(default_factory=SignalConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def num_batches(self, num_points: int) -> int:
        """Mini-batches per epoch for a signal of `num_points` points (teacher.batch_points, or num_batches)."""
        if self.teacher.batch_points:
            return max(1, math.ceil(num_points / self.teacher.batch_points))
        return self.teacher.num_batches

    def num_windows(self, num_points: int, num_chunks: int) -> int:
        """Windows per epoch (teacher.window_points; at most one per chunk, and at most one per batch)."""
        if not self.teacher.window_points:
            return 1
        return min(max(1, math.ceil(num_points / self.teacher.window_points)), num_chunks,
                   self.num_batches(num_points))

    def window_limit(self, num_points: int, num_chunks: int) -> tuple[str, int] | None:
        """What keeps the windows per epoch below what teacher.window_points asks for: ("batches", count)
        (a window holds at least one mini-batch), ("chunks", count) (and at least one chunk), or None. The
        advice to stream in smaller windows names the setting that can change it."""
        asked = max(1, math.ceil(num_points / self.teacher.window_points)) if self.teacher.window_points else 1
        batches = self.num_batches(num_points)
        if self.num_windows(num_points, num_chunks) >= asked:
            return None
        return ("batches", batches) if batches <= num_chunks else ("chunks", num_chunks)

    def numbers(self) -> dict[str, int | float | list]:
        """Every numeric setting by its dotted key (signal.chunk: an edge or a list of edges)."""
        out = {"seed": self.seed}
        for section in ("signal", "model", "teacher", "optim", "train", "checkpoint"):
            for f in dataclasses.fields(getattr(self, section)):
                value = getattr(getattr(self, section), f.name)
                if isinstance(value, (int, float, list)) and not isinstance(value, bool) and f.name != "value_range":
                    out[f"{section}.{f.name}"] = value
        return out

    def validate(self) -> "Config":
        numbers = self.numbers()
        floats = [(k, v) for k, v in numbers.items() if isinstance(v, float)]
        too_large = [(k, v, LIMITS[k]) for k, vs in numbers.items() for v in (vs if isinstance(vs, list) else [vs])
                     if LIMITS.get(k) is not None and math.isfinite(v) and v > LIMITS[k]]
        checks = [
            *[(math.isfinite(v), f"{k} must be a finite number (got {v})") for k, v in floats],
            *[(False, f"{k} = {v:,} is beyond its limit of {limit:,}" + (
                " (a week)" if k == "train.timeout_s" else "")) for k, v, limit in too_large],
            (self.seed >= 0, "seed must be >= 0"),
            (self.model.kind in _field_kinds(), f"model.kind must be one of {_field_kinds()}"),
            (self.model.hidden >= 0, "model.hidden must be >= 1 (or 0: the field's default)"),
            (self.model.layers == 0 or self.model.layers >= 2,
             "model.layers must be >= 2 (a hidden layer and the output; or 0: the field's default)"),
            (self.model.w0 > 0 and self.model.w0_first > 0, "model.w0 and model.w0_first must be > 0"),
            (self.model.activation in ACTIVATIONS, f"model.activation must be one of {ACTIVATIONS}"),
            (self.model.levels >= 1, "model.levels must be >= 1"),
            (self.model.encoding in ENCODINGS, f"model.encoding must be one of {ENCODINGS}"),
            (self.model.features >= 1, "model.features must be >= 1"),
            (1 <= self.model.log2_table <= 30, "model.log2_table must be in 1..30"),
            (self.model.base_resolution >= 1, "model.base_resolution must be >= 1"),
            (self.model.finest_resolution == 0 or self.model.finest_resolution >= self.model.base_resolution,
             f"model.finest_resolution ({self.model.finest_resolution}) must not be below "
             f"model.base_resolution ({self.model.base_resolution}) (or 0: the signal's longest axis)"),
            (self.model.growth == 0 or self.model.growth >= 1,
             "model.growth must be >= 1 (or 0: from base_resolution and finest_resolution)"),
            (self.model.growth == 0 or self.model.finest_resolution == 0,
             "set model.growth or model.finest_resolution, not both (one follows from the other)"),
            (self.teacher.strategy in STRATEGIES, f"teacher.strategy must be one of {STRATEGIES}"),
            (0.0 < self.teacher.ratio <= 1.0, "teacher.ratio must be in (0, 1]"),
            (0.0 <= self.teacher.mix_topk <= 1.0, "teacher.mix_topk must be in [0, 1]"),
            (self.teacher.temperature > 0, "teacher.temperature must be > 0"),
            (0.0 <= self.teacher.replay_uniform <= 1.0, "teacher.replay_uniform must be in [0, 1]"),
            (0.0 <= self.teacher.importance <= 1.0, "teacher.importance must be in [0, 1] (0: off)"),
            (self.teacher.importance == 0 or self.teacher.strategy in ("soft", "replay"),
             f"teacher.importance weights the sampling teachers (soft, replay); teacher.strategy = "
             f"\"{self.teacher.strategy}\" does not sample by error: set teacher.importance = 0"),
            (self.teacher.ratio_schedule in RATIO_SCHEDULES,
             f"teacher.ratio_schedule must be one of {RATIO_SCHEDULES}"),
            (self.teacher.interval_schedule in INTERVAL_SCHEDULES,
             f"teacher.interval_schedule must be one of {INTERVAL_SCHEDULES}"),
            (self.teacher.num_batches >= 1, "teacher.num_batches must be >= 1"),
            (self.teacher.batch_points >= 0, "teacher.batch_points must be >= 0 (0: use teacher.num_batches)"),
            (self.teacher.batch_points == 0 or self.teacher.num_batches == 1,
             "set teacher.batch_points or teacher.num_batches, not both (one follows from the other)"),
            (self.teacher.window_points >= 0, "teacher.window_points must be >= 0 (0: one window)"),
            (self.teacher.score_chunk >= 1, "teacher.score_chunk must be >= 1"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (0 <= self.optim.lr_min <= self.optim.lr, "optim.lr_min must be in [0, optim.lr]"),
            (0 <= self.optim.beta1 < 1 and 0 <= self.optim.beta2 < 1, "optim.beta1/beta2 must be in [0, 1)"),
            (self.optim.eps > 0, "optim.eps must be > 0"),
            (self.optim.grad_clip >= 0, "optim.grad_clip must be >= 0 (0 = off)"),
            (self.train.steps >= 1, "train.steps must be >= 1"),
            (self.train.log_every >= 1, "train.log_every must be >= 1"),
            (self.train.eval_every >= 0, "train.eval_every must be >= 0"),
            (self.train.eval_chunk >= 1, "train.eval_chunk must be >= 1"),
            (self.train.memory_mb >= 0, "train.memory_mb must be >= 0 (0 = the machine's share)"),
            (self.train.max_points_per_pass >= 0, "train.max_points_per_pass must be >= 0 (0 = one pass)"),
            (self.train.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}"),
            (self.signal.target_range in TARGET_RANGES, f"signal.target_range must be one of {TARGET_RANGES}"),
            (self.train.timeout_s > 0, "train.timeout_s must be > 0"),
            (self.train.divergence_db >= 0, "train.divergence_db must be >= 0 (0 = off)"),
            (self.train.probe_points >= 1, "train.probe_points must be >= 1"),
            (self.train.snapshot_every >= 0, "train.snapshot_every must be >= 0 (0: no snapshots)"),
            (self.train.progress_every_s > 0, "train.progress_every_s must be > 0"),
            (not self.train.tensorboard or importlib.util.find_spec("tensorboard") is not None,
             "train.tensorboard = true needs the tensorboard package: pip install tensorboard (or set "
             "train.tensorboard=false)"),
            (0 < self.train.rollback_lr_factor < 1, "train.rollback_lr_factor must be in (0, 1)"),
            (self.train.max_rollbacks >= 0, "train.max_rollbacks must be >= 0"),
            (self.checkpoint.every >= 0, "checkpoint.every must be >= 0"),
            (self.checkpoint.keep >= 1, "checkpoint.keep must be >= 1"),
            (self.signal.chunk == 0 or (self.signal.chunk >= 8 if isinstance(self.signal.chunk, int) else
                                        bool(self.signal.chunk) and all(c >= 1 for c in self.signal.chunk)),
             "signal.chunk must be 0 (the default), an edge >= 8, or a list of edges >= 1, one per axis"),
            (self.signal.value_range in ("data", "dtype") or (
                isinstance(self.signal.value_range, list) and len(self.signal.value_range) == 2
                and all(math.isfinite(v) for v in self.signal.value_range)
                and self.signal.value_range[0] < self.signal.value_range[1]),
             f"signal.value_range must be \"data\", \"dtype\" or [lo, hi] with lo < hi (got "
             f"{self.signal.value_range!r})"),
            (self.signal.points >= 1000, "signal.points must be >= 1000"),
            (self.signal.sdf in ("auto", "watertight"), "signal.sdf must be auto or watertight"),
            (self.signal.kind in ("auto",) + _signal_kinds(), f"signal.kind must be auto or one of {_signal_kinds()}"),
            (self.render.format in ("auto", "png", "tiff", "zarr"), "render.format must be auto, png, tiff or zarr"),
            (bool(self.run.dir), "run.dir must not be empty"),
            (bool(self.signal.path), "signal.path must not be empty"),
        ]
        errors = [msg for ok, msg in checks if not ok]
        if errors:
            raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
        return self


def _field_kinds() -> tuple[str, ...]:
    """The kinds of field (model/field.py, FIELDS), read when a config is checked: config stays free of torch
    until then."""
    from .model.field import FIELDS

    return tuple(FIELDS)


def _signal_kinds() -> tuple[str, ...]:
    """The kinds of signal (modality/kinds.py, MODALITIES), read when a config is checked."""
    from .modality.kinds import MODALITIES

    return tuple(MODALITIES)


def _closest(key: str, valid: list[str]) -> str:
    """'; did you mean ...?' with the names nearest to `key`'s last part among its section's (or the top
    level's), else the list of those names: a hint that fits on a line, not every key of the config."""
    import difflib

    section, _, name = key.rpartition(".")
    if section:
        names = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == section]
    else:
        names = sorted({k.partition(".")[0] for k in valid})
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    full = [f"{section}.{n}" if section else n for n in near]
    if full:
        return f"; did you mean {' or '.join(full)}?"
    return f"; the keys of [{section}] are {', '.join(names)}" if section else \
        f"; the top-level keys and sections are {', '.join(names)}"


def _valid_keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for name, typ in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(typ):
            keys += _valid_keys(typ, prefix + name + ".")
        else:
            keys.append(prefix + name)
    return keys


def _type_name(typ) -> str:
    if typing.get_origin(typ) is list:
        return "a list of integers" if typing.get_args(typ) == (int,) else "a list of numbers"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(typ, str(typ))


def _coerce(key: str, value, typ):
    """Check a TOML/CLI value against the field's type; ints are accepted where floats are expected."""
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # e.g. int | list[int], str | list[float]
        for member in typing.get_args(typ):
            try:
                return _coerce(key, value, member)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(m) for m in typing.get_args(typ))}, "
                          f"got {value!r}")
    if typing.get_origin(typ) is list:
        (item,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(typ)}, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, typ):
        hint = ""
        if typ is str and isinstance(value, (datetime.date, datetime.time, datetime.datetime)):
            hint = f"; TOML reads {value} as a date or time: quote it, e.g. {key}='\"{value}\"'"
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}{hint}")
    return value


def _apply(obj, data: dict, prefix: str, root_cls) -> None:
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        full = prefix + key
        if key not in hints:
            if full in RENAMED_KEYS:
                raise ConfigError(f"config key '{full}' was replaced: set {RENAMED_KEYS[full]}")
            raise ConfigError(f"unknown config key '{full}'{_closest(full, _valid_keys(root_cls))}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"'{full}' is a section; set its keys, e.g. {full}.<key>=...")
            _apply(getattr(obj, key), value, full + ".", root_cls)
        else:
            if isinstance(value, dict):
                raise ConfigError(f"'{full}' is a value, not a section")
            setattr(obj, key, _coerce(full, value, typ))


def _parse_value(text: str):
    """A CLI value is read as TOML (numbers, booleans, quoted strings); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict:
    nested: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier one")
        node[parts[-1]] = _parse_value(text)
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file, then the dotted overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config {path} is a folder; give a TOML file, e.g. configs/demo.toml")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        _apply(cfg, data, "", Config)
    _apply(cfg, parse_overrides(overrides or []), "", Config)
    return cfg.validate()


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    _apply(cfg, data, "", Config)
    return cfg


def diff_configs(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += diff_configs(va, vb, prefix + key + ".")
        elif va != vb:
            out.append(f"{prefix}{key}: {json.dumps(va)} -> {json.dumps(vb)}")
    return out
