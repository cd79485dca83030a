"""The trainer: parse -> init -> build -> train -> close, teardown on every path.

`_train` is the recipe (docs/design.md): the signal, the field and its DeepSpeed engine, the teacher and
the parts around it, resuming, the loop (engine/loop.py: every part decides its own timing), a final
checkpoint, then the outputs (engine/finish.py: a finished training is never lost).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import signal
import socket
import time
from dataclasses import dataclass

import torch

from ..comm import Comm
from ..config import Config
from ..errors import ConfigError
from ..files import atomic_write
from ..modality import MODALITIES, copy_part, finish_signal, modality_for, plan_signal
from ..model import FIELDS, FieldSpec, build_field, field_spec, native_note
from ..logs import LOGGER, set_rank
from ..progress import Progress, Scalars
from ..rundir import RunDir
from ..signal import SignalStore, TargetRange, open_shard, signal_geometry, signal_store_path
from ..teacher import Teacher
from ..teacher.record import ErrorRecord
from ..teacher.snapshot import Snapshots
from .agree import agree_on_failure, everywhere
from .budget import BUFFERS, available, check_field, guard_place, rank_budget
from .checkpoint import Checkpointer
from .deepspeed_engine import build_engine
from .evaluate import Evaluator
from .finish import finish
from .guard import DivergenceGuard
from .launch import detect_launch, die_with_launcher, init_distributed, pick_device, shutdown
from .loop import Interrupted, Loop, StopFlag
from .metrics import MetricsLog
from .parts import Parts
from .precision import Precision
from .sizing import plan_of, size_parts
from .state import RunState
from .step import TrainStep
from .watchdog import Watchdog, peer_lost

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; rerun to resume
EXIT_DIVERGED = 3     # divergence persisted through train.max_rollbacks rollbacks


@dataclass
class Setup:
    """What a start prepares before the field exists (_prepare_run)."""
    store: SignalStore
    shard: object         # signal.Shard, resident or streamed
    plan: object          # teacher.BatchPlan
    budget: object        # engine.budget.Budget
    cfg: Config           # with the parts sized to the budget (engine/sizing.py)
    sized_notes: list[str]
    spec: FieldSpec


def _prepare_run(cfg: Config, comm: Comm, run: RunDir, device: torch.device):
    """Rank 0 creates the run folder and plans the ingest of the signal; every rank copies its share of
    a TIFF or Zarr source; rank 0 finishes the store; then every rank plans its mini-batches, splits its
    memory budget and loads its shard onto `device`: resident when it fits the signal's share, else
    streamed a window at a time. Every wait here is long (one rank may decode a large PNG meanwhile;
    comm.py). The parts (passes, batches, windows) are sized to the budget first (engine/sizing.py).
    Returns the Setup."""
    work = functools.partial(everywhere, comm)
    # One budget for every rank: the smallest any rank has (hosts may differ), so that all size alike.
    total = int(-comm.agree_max([-available(device, cfg.train.memory_mb)[0]])[0])
    # The batch plan an earlier start chose for the same settings: kept (engine/sizing.py, keep_plan). Read
    # by every rank before rank 0 writes it below (collectives lie between).
    kept = json.loads(run.plan.read_text()) if run.plan.is_file() else None
    keep = kept["sized"] if kept and kept.get("asked") == plan_of(cfg) else None

    def begin():
        try:
            run.path.mkdir(parents=True)
            made = True
        except FileExistsError:
            made = False
        run.acquire_lock()
        run.created = made  # removed again if setup fails: only by the start that made it and holds it
        return plan_signal(cfg.signal.path, run.signal_store, cfg.signal.chunk, cfg.signal.allow_large_image,
                           cfg.signal.kind, {"points": cfg.signal.points, "sdf": cfg.signal.sdf})

    plan = None
    try:
        plan = work("prepare the run folder and signal", begin, rank_zero_only=True)
        plan = json.loads(comm.gather_strings(json.dumps(plan), long=True)[0])  # rank 0's plan, everywhere
        # The field's size follows the signal's geometry, known now: a hash table that cannot fit is refused
        # before the signal is copied (docs/fields.md). Every rank decides alike.
        geometry = signal_geometry(plan["shape"], MODALITIES[plan["kind"]].table) if plan is not None else SignalStore(
            signal_store_path(cfg.signal.path, run.signal_store)).geometry
        spec = field_spec(cfg.model, *geometry)  # the one spec of the run: the signal does not change it
        check_field(cfg, device, spec, total)
        if plan is not None:
            lo, hi = plan.get("range") or work(
                "copy its share of the signal", lambda: copy_part(plan, comm.rank, comm.world_size))
            lo, hi = -comm.agree_max([-lo])[0], comm.agree_max([hi])[0]
            work("finish the signal store", lambda: finish_signal(plan, lo, hi), rank_zero_only=True)

        def load():
            store = SignalStore(signal_store_path(cfg.signal.path, run.signal_store), cfg.signal.value_range)
            if cfg.render.format != "auto" and store.kind != "image":
                raise ConfigError(f"render.format = \"{cfg.render.format}\" chooses an image's picture (png, tiff "
                                  f"or zarr); a {store.kind} signal exports its own format: leave render.format = "
                                  f"\"auto\"")
            sized, notes = size_parts(cfg, store, comm.world_size, device, total, spec, keep)
            if comm.is_rank_zero and keep is None:
                atomic_write(run.plan, json.dumps({"asked": plan_of(cfg), "sized": plan_of(sized)}) + "\n")
            own, plan, budget = rank_budget(sized, store, comm.rank, comm.world_size, device, total, spec)
            shard = open_shard(store, own, device, TargetRange.named(cfg.signal.target_range), budget.signal_bytes)
            if shard.streamed:
                shard.check_plan(plan, sized.window_limit(store.num_points, store.num_chunks))
            return Setup(store, shard, plan, budget, sized, notes, spec)

        return work("load its shard of the signal", load)
    except Exception:
        if comm.is_rank_zero and plan is not None:
            shutil.rmtree(plan["tmp"], ignore_errors=True)
        raise


def train(cfg: Config) -> int:
    """Run (or resume) the job described by `cfg`. Returns the process exit code."""
    launch = detect_launch()
    die_with_launcher(launch)
    device = pick_device(launch)
    FIELDS[cfg.model.kind].check_device(cfg.model, device)
    run = RunDir(cfg.run.dir)
    resuming = run.check(cfg, judge_lock=launch.rank == 0)  # read-only, every rank, before any write
    if not FIELDS[cfg.model.kind].follows_signal:  # the field alone, before anything is written (a field
        check_field(cfg, device, field_spec(cfg.model, 3, 4, None))  # that follows the signal: below)
    comm = init_distributed(launch, device, cfg.train.timeout_s)
    set_rank(comm.rank, comm.world_size)
    # Every rank's host, for the message when a peer is lost; from here on a lost peer ends the job within
    # train.timeout_s + a grace, in every phase (engine/watchdog.py).
    def undo_start() -> None:
        # A start that fails before training leaves no folder behind that it made (a corrected rerun
        # would otherwise be refused as a config change); once training ran, checkpoints are kept.
        if run.created and not run.training:
            shutil.rmtree(run.path, ignore_errors=True)

    watchdog = Watchdog(comm, cfg.train.timeout_s, comm.gather_strings(socket.gethostname()), on_lost=undo_start)
    try:
        return _train(cfg, comm, device, run, resuming, watchdog)
    except BaseException as e:
        if peer_lost(e):  # one line that names the lost hosts, not a traceback per rank
            watchdog.lost(f"a collective failed ({str(e).splitlines()[-1][:200]})")
        undo_start()
        raise
    finally:
        watchdog.close()
        if launch.rank == 0:
            run.release_lock()
        shutdown()


def _train(cfg: Config, comm: Comm, device: torch.device, run: RunDir, resuming: bool, watchdog: Watchdog) -> int:
    """The recipe: signal -> field and engine -> teacher and the parts around it -> resume -> loop ->
    checkpoint -> outputs (docs/design.md)."""
    log = Progress(cfg.train.steps, 0, enabled=comm.is_rank_zero, every_s=cfg.train.progress_every_s)
    precision = Precision(cfg.train.precision, device)
    precision.apply()

    # Signal: this rank's chunks on the device, in the source dtype (targets are made per row as needed).
    started = time.perf_counter()
    setup = _prepare_run(cfg, comm, run, device)
    store, shard, plan, budget, sized, notes, spec = (setup.store, setup.shard, setup.plan, setup.budget,
                                                      setup.cfg, setup.sized_notes, setup.spec)
    timings = {"setup": round(time.perf_counter() - started, 3)}  # ingest (when this start ingested), shard
    for note in (run.lock_note, budget.warning):
        if note:
            log.warning(note)
    if notes:
        log.message("parts sized to the budget: " + "; ".join(notes) + " (engine/sizing.py; set them to pin them)")
    saved_cfg, cfg = cfg, sized  # the folder keeps the config as given; the parts use the sizes that fit

    # Field and engine.
    torch.manual_seed(cfg.seed)
    model = build_field(cfg.model, *store.geometry, spec=spec)
    engine, schedule = build_engine(model.to(device), cfg, precision)

    def score(x: torch.Tensor) -> torch.Tensor:  # the teacher's forward: the training precision
        with precision.scoring():
            return engine.module(x)

    predict = engine.module  # evaluation and rendering: fp32 (TF32 where enabled)

    # Teacher, evaluation, guard, step, checkpoints.
    modality = modality_for(store)
    record = ErrorRecord(shard, budget.record_shift) if cfg.teacher.strategy == "replay" else None
    teacher = Teacher(cfg.teacher, cfg.train.steps, cfg.seed, comm, plan, store.num_points, modality.error, record,
                      store.out_channels * shard.target_range.span)
    evaluator = Evaluator(predict, shard, comm, store.num_points, store.out_channels, cfg.train.eval_chunk,
                          cfg.train.probe_points, cfg.seed, modality.psnr_offset_db(store))
    guard = DivergenceGuard(engine, schedule, teacher, cfg.train.divergence_db, cfg.train.rollback_lr_factor,
                            cfg.train.max_rollbacks, modality.exact_psnr_db(store),
                            guard_place(device, spec.num_params, budget.total, budget.parts.get(BUFFERS, 0)),
                            run.guard_state(comm.rank),
                            disk_every=10 * cfg.train.log_every)
    train_step = TrainStep(engine, comm.world_size, store.out_channels, device, cfg.train.max_points_per_pass,
                           modality.error if teacher.observes else None)
    state = RunState()
    ckpt = Checkpointer(engine, run, comm, cfg.checkpoint.every, cfg.checkpoint.keep,
                        shared={"run": state, "guard": guard, "schedule": schedule},
                        chunked={"teacher": teacher})
    _resume(saved_cfg, comm, run, ckpt, state, log, resuming)
    log.message(f"{store.shape} signal, {store.num_chunks} chunks over {comm.world_size} rank(s)"
                f"{' (streamed from disk, a window at a time)' if shard.streamed else ''}; budget per rank "
                f"{budget.total / 2**20:,.0f} MiB ({budget.where}; {budget.signal_bytes / 2**20:,.0f} MiB for the "
                f"signal); "
                f"{spec.describe()} ({model.num_params:,} params, {spec.num_bytes / 2**20:.1f} MiB"
                f"{native_note(spec, device)}); teacher "
                f"{cfg.teacher.strategy}; {cfg.train.precision}{' compiled' if cfg.train.compile else ''}; "
                f"{cfg.train.steps} steps on {device}")

    with contextlib.ExitStack() as stack:
        # Lines past the resumed step are dropped (those steps train again), unless training had ended.
        metrics = stack.enter_context(MetricsLog(run.metrics, comm.is_rank_zero,
                                                 math.inf if state.ended else state.step))
        scalars = everywhere(comm, "open its TensorBoard writer", lambda: Scalars(
            run.tensorboard, cfg.train.tensorboard, state.step), rank_zero_only=True) or Scalars(None, False)
        stack.callback(scalars.close)
        stop = stack.enter_context(StopFlag(comm))
        stack.callback(shard.close)
        stack.callback(guard.close)
        stack.callback(log.close)
        snapshots = Snapshots(store, shard, cfg.teacher.score_chunk) if cfg.train.snapshot_every else None
        parts = Parts(cfg, comm, run, store, shard, plan, spec, engine, schedule, score, predict, teacher, evaluator,
                      guard, train_step, state, ckpt, log, watchdog)
        outcome = Loop(parts, metrics, scalars, snapshots, stop,
                       reuse_scores=not shard.streamed and not precision.bf16).run()
        if outcome.stopped_by:
            ckpt.save(state.step, "interrupted")
            log.message(f"stopped by {signal.Signals(outcome.stopped_by).name} at step {state.step}; checkpoint "
                        f"saved in {run.checkpoints}. Run the same command again to resume.")
            return EXIT_INTERRUPTED
        if not ckpt.holds(state.step, state.ended):  # ended early: the state to keep, and why it ended
            ckpt.save(state.step, outcome.status)
        # The checkpoint holds the training now: a stop signal during the outputs ends the run at once
        # (exit 75); the same command then redoes only what is missing (engine/finish.py).
        watchdog.phase = "while writing the outputs"
        try:
            with stop.interrupting():
                summary = finish(parts, outcome.status, timings, {"sized_parts": notes})
        except Interrupted as e:
            log.message(f"stopped by {signal.Signals(e.signum).name} while writing the outputs; the training is "
                        f"saved in {run.checkpoints}. Run the same command again to finish them.")
            return EXIT_INTERRUPTED
    if comm.is_rank_zero:
        print(final_line(summary), flush=True)
        for note in summary.get("warnings", []):
            LOGGER.warning(note)
    return EXIT_DIVERGED if outcome.status == "diverged" else 0


def final_line(summary: dict) -> str:
    """The line a run ends with: PSNR, its kind's own metrics, time, the file to open."""
    def value(key: str):
        # null in summary.json: infinite (an exact fit) or NaN, named under not_finite (dist_int/jsonio.py)
        v = summary.get(key)
        return v if v is not None else (summary.get("not_finite") or {}).get(key, "n/a")

    more = "".join(f"  {label} {value(key)}" for key, label in (
        ("ssim", "SSIM"), ("snr_db", "SNR (dB)"), ("iou", "IoU"), ("chamfer", "Chamfer")) if key in summary)
    psnr = value("psnr_db")
    psnr = f"{psnr:.2f} dB" if isinstance(psnr, float) else psnr
    out = summary.get("reconstruction") or "no reconstruction written (see the warnings)"
    return f"PSNR {psnr}{more}  train time {summary['train_time_s']:.1f} s  -> {out}"


def _resume(cfg: Config, comm: Comm, run: RunDir, ckpt: Checkpointer, state: RunState, log: Progress,
            resuming: bool) -> None:
    """Load the latest intact checkpoint (when resuming), then save the config: a start refused here
    (e.g. a checkpoint that does not fit a changed config) leaves the folder's config.toml as it was."""
    tag = ckpt.latest_tag() if resuming else None
    if resuming and ckpt.fallback_note:
        log.warning(ckpt.fallback_note)
    if tag is not None:
        meta, error = None, None
        try:
            meta = ckpt.load(tag)
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
        agree_on_failure(comm, error, f"load checkpoint {tag}")
        log.message(f"resuming {run.path} from step {state.step} ({run.checkpoints / tag}, saved by "
                    f"{meta['world_size']} rank(s); now {comm.world_size})")
    if state.ended and run.config_changed:  # resumed with another config (run.allow_config_change): train on
        log.message(f"training had ended at step {state.step} ({state.ended}); it goes on with the changed config")
        state.ended = ""
    if state.step > cfg.train.steps:
        raise ConfigError(f"{run.path} has already trained {state.step} steps, more than train.steps="
                          f"{cfg.train.steps}; raise train.steps to at least {state.step}, or use a new run.dir")
    # Snapshots past the resumed step are from steps about to be trained again (by any number of ranks).
    everywhere(comm, "save the run config", lambda: (run.write_config(cfg), run.drop_snapshots(state.step)),
               rank_zero_only=True)
    run.training = True
