"""The training loop: parse -> init -> build -> train -> close, teardown on every path.

Each step: the teacher picks this rank's part of the global teaching set, the SIREN trains on it through
DeepSpeed. Every other piece decides its own timing (stop checks, logging, evaluation, checkpoints) at
steps every rank knows in advance (docs/design.md, "Ranks agree before they act").
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import signal

import numpy as np
import torch

from ..comm import Comm
from ..config import Config
from ..errors import ConfigError, PeerFailed
from ..model import FieldSpec, bits_per_sample, build_field, field_spec
from ..progress import Progress, Scalars
from ..modality import modality_for
from ..render import psnr_db, render_shard
from ..rundir import RunDir, atomic_write
from ..signal import (Shard, SignalStore, TargetRange, assign_chunks, finish_ingest, ingest_part, open_shard,
                      plan_signal, signal_geometry, signal_store_path)
from ..teacher import Teacher, make_plan
from ..teacher.snapshot import Snapshots
from .budget import check_memory
from .checkpoint import Checkpointer
from .deepspeed_engine import build_engine
from .evaluate import Evaluator
from .guard import DivergenceGuard, Diverged
from .launch import detect_launch, init_distributed, pick_device, shutdown
from .metrics import MetricsLog, SectionTimer, Throughput, memory_peaks, rounded
from .precision import Precision
from .state import RunState
from .step import TrainStep

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; rerun to resume
EXIT_DIVERGED = 3     # divergence persisted through train.max_rollbacks rollbacks
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOP_CHECK_EVERY = 10  # steps between stop-flag agreements (a host-only collective, no device sync)


class StopFlag:
    """Signal handlers only set a flag; the ranks agree on the step to stop at through one collective."""

    def __init__(self, comm: Comm):
        self.comm, self.signum, self._previous = comm, 0, {}

    def __enter__(self):
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C quits at once
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)

    def agreed(self, step: int) -> int:
        """The signal any rank got (0: none), checked every STOP_CHECK_EVERY steps on every rank."""
        if step % STOP_CHECK_EVERY:
            return 0
        return int(self.comm.agree_max([self.signum])[0])


def _memory(comm: Comm, device: torch.device) -> dict:
    """Every rank's peak host RSS and peak GPU memory so far, MiB, as lists by rank (a control collective)."""
    rss, gpu = memory_peaks(device)
    out = {"peak_rss_mb": [round(v, 1) for v in comm.all_gather_scalar(rss).tolist()]}
    gpus = comm.all_gather_scalar(-1.0 if gpu is None else gpu).tolist()
    out["peak_gpu_mb"] = None if gpu is None else [round(v, 1) for v in gpus]
    return out


def _agree_on_failure(comm: Comm, error: Exception | None, what: str, long: bool = False) -> None:
    """Every rank fails together when any rank failed, and every rank says why: the first failing rank
    raises its own error, the others PeerFailed with its message. `long`: the step just done may take one
    rank much longer than the others (no collective timeout while they wait; comm.py)."""
    messages = comm.gather_strings("" if error is None else (str(error) or type(error).__name__), long)
    failed = [r for r, m in enumerate(messages) if m]
    if not failed:
        return
    if error is not None and comm.rank == failed[0]:
        raise error
    raise PeerFailed(f"rank {failed[0]} failed to {what}: {messages[failed[0]]}")


def _everywhere(comm: Comm, what: str, work, rank_zero_only: bool = False):
    """Run `work` on every rank (or on rank 0 only) and wait for all without the dead-rank timeout (the
    work may be long; comm.py); every rank fails together and says why. Returns work()'s result."""
    result, error = None, None
    if comm.is_rank_zero or not rank_zero_only:
        try:
            result = work()
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
    _agree_on_failure(comm, error, what, long=True)
    return result


def _prepare_run(cfg: Config, comm: Comm, run: RunDir, device: torch.device) -> tuple[SignalStore, Shard]:
    """Rank 0 creates the run folder and plans the ingest of the signal; every rank copies its share of
    a TIFF or Zarr source; rank 0 finishes the store and saves the resolved config; then every rank
    loads its shard onto `device`. Every wait here is long (one rank may decode a large PNG meanwhile;
    comm.py)."""
    everywhere = functools.partial(_everywhere, comm)

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
        plan = everywhere("prepare the run folder and signal", begin, rank_zero_only=True)
        plan = json.loads(comm.gather_strings(json.dumps(plan), long=True)[0])  # rank 0's plan, everywhere
        # The field's size follows the signal's geometry, known now: a hash table that cannot fit is refused
        # before the signal is copied (docs/fields.md). Every rank decides alike.
        geometry = signal_geometry(plan["shape"], plan["kind"]) if plan is not None else SignalStore(
            signal_store_path(cfg.signal.path, run.signal_store)).geometry
        check_memory(cfg, device, field_spec(cfg.model, *geometry), 0, 0)
        if plan is not None:
            lo, hi = plan.get("range") or everywhere(
                "copy its share of the signal", lambda: ingest_part(plan, comm.rank, comm.world_size))
            lo, hi = -comm.agree_max([-lo])[0], comm.agree_max([hi])[0]
            everywhere("finish the signal store", lambda: finish_ingest(plan, lo, hi), rank_zero_only=True)

        def load():
            store = SignalStore(signal_store_path(cfg.signal.path, run.signal_store))
            owners = assign_chunks(store.num_chunks, comm.world_size, cfg.seed)
            return store, open_shard(store, owners[comm.rank], device, TargetRange.named(cfg.signal.target_range),
                                     cfg.signal.cache_mb)

        return everywhere("load its shard of the signal", load)
    except Exception:
        if comm.is_rank_zero and plan is not None:
            shutil.rmtree(plan["tmp"], ignore_errors=True)
        raise


def train(cfg: Config) -> int:
    """Run (or resume) the job described by `cfg`. Returns the process exit code."""
    launch = detect_launch()
    device = pick_device(launch)
    run = RunDir(cfg.run.dir)
    resuming = run.check(cfg)  # read-only, on every rank, before anything is written
    if cfg.model.kind == "siren":  # the model alone, before anything is written (a hash table's size
        check_memory(cfg, device, field_spec(cfg.model, 3, 4, None), 0, 0)  # needs the signal: below)
    comm = init_distributed(launch, device, cfg.train.timeout_s)
    try:
        return _train(cfg, comm, device, run, resuming)
    except BaseException:
        # A start that fails before training leaves no folder behind that it made (a corrected rerun
        # would otherwise be refused as a config change); once training ran, checkpoints are kept.
        if run.created and not run.training:
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    finally:
        if launch.rank == 0:
            run.release_lock()
        shutdown()


def _train(cfg: Config, comm: Comm, device: torch.device, run: RunDir, resuming: bool) -> int:
    log = Progress(cfg.train.steps, 0, enabled=comm.is_rank_zero, every_s=cfg.train.progress_every_s)
    precision = Precision(cfg.train.precision, device)
    precision.apply()

    # Signal: this rank's chunks on the device, in the source dtype (targets are made per row as needed).
    store, shard = _prepare_run(cfg, comm, run, device)

    # Refused here when the largest pass cannot fit (the folder made for it is removed again).
    num_batches = cfg.num_batches(store.num_points)
    batch_points = max(shard.num_points // num_batches, 1) + shard.num_points % num_batches
    spec = field_spec(cfg.model, *store.geometry)
    _everywhere(comm, "check its memory", lambda: check_memory(
        cfg, device, spec, min(cfg.train.max_points_per_pass or batch_points, batch_points),
        min(max(cfg.teacher.score_chunk, cfg.train.eval_chunk), shard.num_points),
        0 if shard.streamed else shard.raw.numel() * shard.raw.element_size()))

    # Model and engine.
    torch.manual_seed(cfg.seed)
    model = build_field(cfg.model, *store.geometry)
    engine, schedule = build_engine(model.to(device), cfg, precision)

    def score(x: torch.Tensor) -> torch.Tensor:  # the teacher's forward: the training precision
        with precision.scoring():
            return engine.module(x)

    render_predict = engine.module  # evaluation and rendering: fp32 (TF32 where enabled)

    # Teacher, evaluation, guard, step.
    plan, error = None, None
    try:
        plan = make_plan(cfg.teacher.batches, [store.chunk_size(c) for c in range(store.num_chunks)],
                         shard.chunk_ids, shard.chunk_start, num_batches, cfg.seed, device)
        if shard.streamed:  # ranks may differ here (shards differ by a chunk), so they agree on failure
            shard.check_plan(plan)
    except Exception as e:  # noqa: BLE001
        error = e
    _agree_on_failure(comm, error, "plan its mini-batches")
    teacher = Teacher(cfg.teacher, cfg.train.steps, cfg.seed, comm, plan, store.num_points,
                      modality_for(store).error)
    evaluator = Evaluator(render_predict, shard, comm, store.num_points, store.out_channels, cfg.train.eval_chunk,
                          cfg.train.probe_points, cfg.seed)
    guard = DivergenceGuard(engine, schedule, teacher, cfg.train.divergence_db, cfg.train.rollback_lr_factor,
                            cfg.train.max_rollbacks)
    train_step = TrainStep(engine, comm.world_size, store.out_channels, device, cfg.train.max_points_per_pass)
    state = RunState()
    ckpt = Checkpointer(engine, run, comm, cfg.checkpoint.every, cfg.checkpoint.keep,
                        shared={"run": state, "guard": guard, "schedule": schedule},
                        chunked={"teacher": teacher})

    tag = ckpt.latest_tag() if resuming else None
    if resuming and ckpt.fallback_note:
        log.message("warning: " + ckpt.fallback_note)
    if tag is not None:
        meta, error = None, None
        try:
            meta = ckpt.load(tag)
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
        _agree_on_failure(comm, error, f"load checkpoint {tag}")
        log.message(f"resuming {run.path} from step {state.step} ({run.checkpoints / tag}, saved by "
                    f"{meta['world_size']} rank(s); now {comm.world_size})")
    if state.step > cfg.train.steps:
        raise ConfigError(f"{run.path} has already trained {state.step} steps, more than train.steps="
                          f"{cfg.train.steps}; raise train.steps to at least {state.step}, or use a new run.dir")
    # The config is saved only now: a start refused above (e.g. a checkpoint that does not fit a changed
    # config) leaves the folder's config.toml as it was.
    # Snapshots past the resumed step are from steps about to be trained again (by any number of ranks).
    _everywhere(comm, "save the run config", lambda: (run.write_config(cfg), run.drop_snapshots(state.step)),
                rank_zero_only=True)
    run.training = True
    log.message(f"{store.shape} signal, {store.num_chunks} chunks over {comm.world_size} rank(s)"
                f"{' (streamed from disk)' if shard.streamed else ''}; "
                f"{spec.describe()} ({model.num_params:,} params, {spec.num_bytes / 2**20:.1f} MiB); teacher "
                f"{cfg.teacher.strategy}; {cfg.train.precision}{' compiled' if cfg.train.compile else ''}; "
                f"{cfg.train.steps} steps on {device}")

    meter = Throughput(device)
    selecting = SectionTimer(device)
    reusing = SectionTimer(device)  # evaluations that also score for the next selection: training time
    snapshots = Snapshots(store, shard, cfg.teacher.score_chunk) if cfg.train.snapshot_every else None
    # An evaluation may hand its per-point errors to the selection of the next step: valid when it scores
    # the same rows with the same model at the same precision (docs/method.md, "Cheaper selection").
    reuse_scores = not shard.streamed and not precision.bf16
    log.begin(state.step)
    stopped_by, status = 0, "complete"
    with contextlib.ExitStack() as stack:
        metrics = stack.enter_context(MetricsLog(run.metrics, comm.is_rank_zero, state.step))
        scalars = _everywhere(comm, "open its TensorBoard writer", lambda: Scalars(
            run.tensorboard, cfg.train.tensorboard, state.step), rank_zero_only=True) or Scalars(None, False)
        stack.callback(scalars.close)
        stop = stack.enter_context(StopFlag(comm))
        stack.callback(shard.close)
        stack.callback(log.close)
        guard.start(state.step)  # the state we start (or resume) from is the first good one
        meter.start()
        while state.step < cfg.train.steps:
            stopped_by = stop.agreed(state.step)
            if stopped_by:
                break
            shard.stage(plan, state.step)  # a streamed shard swaps in this batch's chunks (read ahead)
            with selecting:
                batch = teacher.teaching_set(state.step, shard, score)
            if snapshots is not None and state.step % cfg.train.snapshot_every == 0:
                meter.pause()  # not training time; every rank resumes the clock together
                _everywhere(comm, "write its teaching-set snapshot", functools.partial(
                    snapshots.write, run.snapshot(state.step), comm.rank, comm.world_size, batch.rows,
                    batch.count, cfg.teacher.strategy))
                meter.start()
            train_step(shard.coords(batch.rows), shard.targets(batch.rows), batch.count, batch.max_rows)
            meter.add(batch.count)
            state.step += 1
            step = state.step
            log.tick(step)

            do_log = step % cfg.train.log_every == 0 or step == cfg.train.steps
            do_eval = cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0
            do_ckpt = ckpt.due(step, cfg.train.steps)
            if not (do_log or do_eval or do_ckpt):
                continue
            # An evaluation that scored for a selection did the selection's work: its time is training
            # (and selection) time, counted in this interval.
            reused_s = reusing.read()
            seconds = meter.lap() + reused_s
            select_s = selecting.read() + reused_s
            state.train_time_s += seconds
            state.select_time_s += select_s
            if do_log or do_eval:
                mean_loss = train_step.mean_loss(comm)
                probe = evaluator.probe_psnr()
                try:
                    back_to = guard.check(step, mean_loss, probe)
                except Diverged as e:
                    status = "diverged"
                    log.message(f"diverged: {e}; stopping with the last good state (step "
                                f"{guard.snapshot.step})")
                    metrics.write({"step": step, "event": "diverged", "probe_psnr_db": rounded(probe)})
                    state.step = guard.restore()
                    break
                if back_to is not None:
                    log.message(f"divergence at step {step}: probe PSNR {probe:.2f} dB (best "
                                f"{guard.best_db:.2f} dB); rolled back to step {back_to}, learning rate x"
                                f"{schedule.scale:g}")
                    metrics.write({"step": step, "event": "rollback", "to_step": back_to,
                                   "lr_scale": schedule.scale, "probe_psnr_db": rounded(probe)})
                    state.step = back_to
                    meter.reset()
                    reusing.read()
                    log.begin(back_to)
                    meter.start()
                    continue
                psnr = None
                if do_eval and reuse_scores and step < cfg.train.steps and teacher.wants_scores(step):
                    with reusing:
                        psnr, scores = evaluator.psnr_and_scores(teacher.error, cfg.teacher.score_chunk)
                    teacher.offer_scores(step, scores)
                elif do_eval:
                    psnr = evaluator.psnr()
                if psnr is not None and psnr > state.best_psnr_db:
                    state.best_psnr_db, state.best_step = psnr, step
                local = shard.num_points if batch.rows is None else batch.rows.numel()
                counts = comm.all_gather_scalar(local)
                selections, sent, reused = teacher.selection_stats()
                entry = {"step": step, "train_time_s": round(state.train_time_s, 4), "loss": mean_loss,
                         "probe_psnr_db": rounded(probe), "lr": engine.get_lr()[0], "selected": batch.count,
                         "points_per_s": round(meter.points_per_s(), 1),
                         "imbalance": round(float(counts.max() / counts.mean().clamp(min=1e-9)), 4),
                         # Bytes each rank sent per selection: a constant (docs/design.md, "Exact global
                         # selection"), whatever the signal's size and the number of ranks.
                         "selections": selections, "select_bytes": sent // max(selections, 1),
                         # The teacher's share of the training time since the last line (scoring and
                         # selection), and selections that took an evaluation's scores instead of scoring.
                         "select_fraction": round(select_s / max(seconds, 1e-9), 4),
                         "scores_reused": reused}
                if psnr is not None:
                    entry["psnr_db"] = round(psnr, 4)
                entry.update(_memory(comm, device))
                metrics.write(entry)
                scalars.write(entry, step)
                log.update(step, mean_loss, psnr, meter.points_per_s())
                meter.reset()
            if do_ckpt:
                ckpt.save(step, "running")
            meter.start()

        if stopped_by:
            ckpt.save(state.step, "interrupted")
            log.message(f"stopped by {signal.Signals(stopped_by).name} at step {state.step}; checkpoint "
                        f"saved in {run.checkpoints}. Run the same command again to resume.")
            return EXIT_INTERRUPTED
        if status == "complete" and not ckpt.exists(state.step):
            ckpt.save(state.step, "complete")
        summary = _finish(cfg, comm, store, shard, render_predict, run, state, guard.rollbacks, status,
                          spec)
    if comm.is_rank_zero:
        more = "".join(f"  {label} {summary[key]}" for key, label in (("ssim", "SSIM"), ("snr_db", "SNR (dB)"))
                       if key in summary)
        print(f"PSNR {summary['psnr_db']:.2f} dB{more}  train time "
              f"{summary['train_time_s']:.1f} s  -> {summary['reconstruction']}", flush=True)
        if "warning" in summary:
            print("warning: " + summary["warning"], flush=True)
    return EXIT_DIVERGED if status == "diverged" else 0


def _finish(cfg: Config, comm: Comm, store: SignalStore, shard: Shard, predict, run: RunDir, state: RunState,
            rollbacks: int, status: str, spec: FieldSpec) -> dict:
    """Every rank renders its chunks into one Zarr store; rank 0 exports it and writes summary.json."""
    tmp = run.reconstruction_tmp

    everywhere = functools.partial(_everywhere, comm)

    modality = modality_for(store)
    everywhere("create the output store", lambda: (shutil.rmtree(tmp, ignore_errors=True),
                                                   modality.create_output(tmp, store)), rank_zero_only=True)
    # Rendering, pyramid levels and metrics are shared by all ranks; waits on them are long (comm.py).
    sse = everywhere("render its chunks", lambda: render_shard(predict, shard, modality.writer(tmp, store),
                                                               cfg.train.eval_chunk))
    sse = float(comm.all_reduce_sum(torch.tensor([sse], dtype=torch.float64)))
    everywhere("render its share of the output", lambda: modality.render_extra(
        predict, tmp, store, comm.rank, comm.world_size, shard.device, shard.target_range))
    for level in range(1, modality.num_levels(tmp)):
        everywhere(f"build output level {level}", lambda: modality.build_level(tmp, level, comm.rank,
                                                                              comm.world_size))
    sums = everywhere("compute its share of the metrics",
                      lambda: modality.metric_sums(tmp, store, comm.rank, comm.world_size))
    if sums is not None:
        sums = comm.all_reduce_sum(torch.from_numpy(np.asarray(sums, dtype=np.float64))).numpy()
    extra = modality.metrics(sums, store)

    def publish():
        final = run.reconstruction_zarr
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return modality.export(final, run.reconstruction_stem, cfg.render.format, store)

    image = everywhere("export the reconstruction", publish, rank_zero_only=True)
    memory = _memory(comm, shard.device)  # peaks over the whole run, export included
    summary = {}
    if comm.is_rank_zero:
        psnr = psnr_db(sse, store.num_points * store.out_channels)
        summary = {
            "psnr_db": round(psnr, 4),
            "psnr_is": "final (not the best seen during training), on the source range mapped to [0, 1]",
            "kind": store.meta.get("kind", "image"),
            **extra,
            "train_time_s": round(state.train_time_s, 3),
            "select_time_s": round(state.select_time_s, 3),
            "select_fraction": round(state.select_time_s / max(state.train_time_s, 1e-9), 4),
            "steps": state.step,
            "world_size": comm.world_size,
            # What the fidelity costs: the field's size (fp32 parameters) and its bits per signal point.
            "field": spec.kind,
            "num_params": spec.num_params,
            "field_bytes": spec.num_bytes,
            "bits_per_sample": round(bits_per_sample(spec.num_bytes, store.num_points), 4),
            "strategy": cfg.teacher.strategy,
            "precision": cfg.train.precision,
            "compile": cfg.train.compile,
            "target_range": cfg.signal.target_range,
            "signal": cfg.signal.path,
            "shape": list(store.shape),
            "reconstruction": str(image),
            "status": status,
            "rollbacks": rollbacks,
            **memory,
        }
        if math.isfinite(state.best_psnr_db):
            summary.update(best_psnr_db=round(state.best_psnr_db, 4), best_step=state.best_step)
            # A run never ends worse than its best evaluation without saying so.
            if psnr < state.best_psnr_db - 0.05:
                summary["warning"] = (f"final PSNR {psnr:.2f} dB is below the best evaluated, "
                                      f"{state.best_psnr_db:.2f} dB at step {state.best_step}")
        if status == "diverged":
            summary["warning"] = (summary.get("warning", "") + "; " if "warning" in summary else "") + \
                "training diverged and stopped early; the reconstruction is the last good state"
        atomic_write(run.summary, json.dumps(summary, indent=1) + "\n")
    comm.barrier()
    return summary
