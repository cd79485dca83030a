"""The training loop: parse -> init -> build -> train -> close, teardown in `finally`.

Each step: the teacher picks this rank's part of the global teaching set, the SIREN trains on it through
DeepSpeed, and all ranks agree (one all-reduce) whether to stop. Evaluation, checkpoints and the final
render happen at steps every rank knows in advance (DESIGN.md sec. 4).
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import zarr

from .. import rundir
from ..comm import Comm
from ..config import Config
from ..errors import PeerFailed
from ..model import Siren
from ..progress import Progress
from ..render import export, psnr_db, render_shard, shard_sse, ssim_of
from ..signal import Shard, SignalStore, assign_chunks, prepare_signal, signal_store_path
from ..teacher import BatchPlan, Teacher, hash_uniform
from . import checkpoint
from .deepspeed_engine import build_engine
from .guard import DivergenceGuard, Diverged
from .launch import detect_launch, init_distributed, pick_device, shutdown

EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: stopped by a signal after a checkpoint; rerun to resume
EXIT_DIVERGED = 3     # divergence persisted through train.max_rollbacks rollbacks
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOP_CHECK_EVERY = 10  # steps between stop-flag agreements
PROBE_SALT = 0x9B0BE  # keeps the probe set's hash apart from the uniform teacher's


def _round(x: float, digits: int = 4):
    return round(x, digits) if math.isfinite(x) else None


class StopFlag:
    """Signal handlers only set a flag; the ranks agree on the step to stop at through an all-reduce."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _agree_on_failure(comm: Comm, error: Exception | None, what: str) -> None:
    """Every rank fails together when any rank failed; the first failing rank raises its own error."""
    failed = [r for r, f in enumerate(comm.all_gather_scalar(1.0 if error else 0.0).tolist()) if f]
    if not failed:
        return
    if error is not None and comm.rank == failed[0]:
        raise error
    raise PeerFailed(f"rank {failed[0]} failed to {what} (its error is above)")


def _prepare_run(cfg: Config, comm: Comm, run_dir: Path) -> tuple[SignalStore, Shard]:
    """Rank 0 creates the run folder, saves the resolved config and ingests the signal; then every rank
    loads its shard. When any of it fails, a run folder made just now is removed again."""
    created = comm.is_rank_zero and not run_dir.exists()
    error = None
    try:
        if comm.is_rank_zero:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                prepare_signal(cfg.signal.path, run_dir, cfg.signal.chunk)
                rundir.write_config(cfg)
            except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
                error = e
        _agree_on_failure(comm, error, "prepare the run folder and signal")
        shard = None
        try:
            store = SignalStore(signal_store_path(cfg.signal.path, run_dir))
            owners = assign_chunks(store.num_chunks, comm.world_size, cfg.seed)
            shard = Shard.load(store, owners[comm.rank])
        except Exception as e:  # noqa: BLE001
            error = e
        _agree_on_failure(comm, error, "load its shard of the signal")
        return store, shard
    except Exception:
        if created:
            shutil.rmtree(run_dir, ignore_errors=True)  # leave no half-made folder behind
        raise


def train(cfg: Config) -> int:
    """Run (or resume) the job described by `cfg`. Returns the process exit code."""
    launch = detect_launch()
    device = pick_device(launch)
    resuming = rundir.check_run_dir(cfg)  # read-only, on every rank, before anything is written
    comm = init_distributed(launch, device, cfg.train.timeout_s)
    try:
        return _train(cfg, comm, device, resuming)
    finally:
        shutdown()


@dataclass
class RunState:
    """What a checkpoint's meta.json carries besides the engine and teacher state."""
    step: int = 0
    train_time_s: float = 0.0
    best_psnr_db: float = -float("inf")
    best_step: int = 0
    rollbacks: int = 0
    lr_scale: float = 1.0
    best_probe_psnr_db: float = -float("inf")


def _train(cfg: Config, comm: Comm, device: torch.device, resuming: bool) -> int:
    run_dir = Path(cfg.run.dir)
    log = Progress(cfg.train.steps, 0, enabled=comm.is_rank_zero)
    store, shard = _prepare_run(cfg, comm, run_dir)
    shard = shard.to(device)

    torch.manual_seed(cfg.seed)
    model = Siren(len(store.spatial), store.channels, cfg.model.hidden, cfg.model.layers,
                  cfg.model.w0, cfg.model.w0_first)
    engine, schedule = build_engine(model.to(device), cfg)
    # bf16 is autocast around the forward passes (fp32 master weights and Adam state), not DeepSpeed's
    # bf16 mode: that one casts the inputs too, and bf16 coordinates (8-bit mantissa) cannot tell apart
    # neighbouring pixels of even a 512-pixel axis. The SIREN keeps its first layer in fp32 for the same reason.
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.train.bf16)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with autocast():
            return engine.module(x)

    plan = BatchPlan([store.chunk_size(c) for c in range(store.num_chunks)], shard.chunk_ids,
                     shard.chunk_start, cfg.teacher.num_batches, cfg.seed)
    teacher = Teacher(cfg.teacher, cfg.train.steps, cfg.seed, comm, plan)
    guard = DivergenceGuard(engine, schedule, teacher, cfg.train.divergence_db, cfg.train.rollback_lr_factor,
                            cfg.train.max_rollbacks)

    ckpt_root = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    state = RunState()
    tag = checkpoint.latest_tag(ckpt_root) if resuming else None
    if tag is not None:
        meta, states = checkpoint.load(engine, ckpt_root, tag)
        teacher.load_state_dicts([s["teacher"] for s in states], shard.gids)
        state = RunState(**{k: meta[k] for k in asdict(state) if k in meta})
        schedule.scale = state.lr_scale
        guard.rollbacks, guard.best_db = state.rollbacks, state.best_probe_psnr_db
        log.message(f"resuming {run_dir} from step {state.step} ({ckpt_root / tag}, saved by "
                    f"{meta['world_size']} rank(s); now {comm.world_size})")
        if comm.is_rank_zero:
            rundir.truncate_metrics(metrics_path, state.step)
    log.message(f"{store.shape} signal, {store.num_chunks} chunks over {comm.world_size} rank(s); "
                f"SIREN {cfg.model.layers}x{cfg.model.hidden} ({model.num_params:,} params); teacher "
                f"{cfg.teacher.strategy}; {cfg.train.steps} steps on {device}")

    def save(status: str) -> None:
        state.rollbacks, state.lr_scale, state.best_probe_psnr_db = guard.rollbacks, schedule.scale, guard.best_db
        checkpoint.save(engine, ckpt_root, state.step, {**asdict(state), "status": status},
                        {"teacher": teacher.state_dict(shard.gids)}, comm, cfg.checkpoint.keep)

    def evaluate() -> float:
        sse = comm.all_reduce_sum(torch.tensor([shard_sse(predict, shard.coords, shard.values,
                                                          cfg.teacher.score_chunk)], dtype=torch.float64))
        psnr = psnr_db(float(sse), store.num_points * store.channels)
        if psnr > state.best_psnr_db:
            state.best_psnr_db, state.best_step = psnr, state.step
        return psnr

    # A fixed random probe set (the same points for any world size) for the divergence guard.
    frac = min(1.0, cfg.train.probe_points / store.num_points)
    probe_rows = torch.nonzero(hash_uniform(shard.gids, cfg.seed, PROBE_SALT) < frac).squeeze(1)

    def probe_psnr() -> float:
        sse = shard_sse(predict, shard.coords[probe_rows], shard.values[probe_rows], cfg.teacher.score_chunk)
        total = comm.all_reduce_sum(torch.tensor([sse, probe_rows.numel()], dtype=torch.float64))
        return psnr_db(float(total[0]), max(int(total[1]), 1) * store.channels)

    metrics = open(metrics_path, "a") if comm.is_rank_zero else None

    def record(entry: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(entry) + "\n")
            metrics.flush()

    num_channels, world = store.channels, comm.world_size
    session_start_step, session_time = state.step, 0.0
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    interval_points, interval_steps, interval_time = 0, 0, 0.0
    stopped_by, status = 0, "complete"
    guard.start(state.step)  # the state we start (or resume) from is the first good one
    with StopFlag() as stop:
        _sync(device)
        mark = time.perf_counter()
        while state.step < cfg.train.steps:
            # Every STOP_CHECK_EVERY steps (the same steps on every rank), agree whether any rank got a stop
            # signal: one tiny all-reduce, and on GPUs one sync, which every step would pay for nothing.
            if state.step % STOP_CHECK_EVERY == 0:
                flag = comm.all_reduce_max(torch.tensor([float(stop.signum)], dtype=torch.float64))
                if flag.item() > 0:
                    stopped_by = int(flag.item())
                    break
            rows, count, _ = teacher.teaching_set(state.step, shard.coords, shard.values, shard.gids, predict)
            x = shard.coords if rows is None else shard.coords[rows]
            y = shard.values if rows is None else shard.values[rows]
            with autocast():
                pred = engine(x).float()
            # The update is the gradient of the MSE over the *global* teaching set (DESIGN.md sec. 1):
            # DeepSpeed averages gradients over ranks, so each rank's loss is its share of the global sum
            # of squared errors divided by the global count, times world_size.
            loss = (pred - y).square().sum() * (world / (count * num_channels))
            engine.backward(loss)
            engine.step()
            state.step += 1
            loss_sum += loss.detach().double()
            interval_points += count
            interval_steps += 1

            step = state.step
            do_log = step % cfg.train.log_every == 0 or step == cfg.train.steps
            do_eval = cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0
            do_ckpt = cfg.checkpoint.every > 0 and step % cfg.checkpoint.every == 0
            if not (do_log or do_eval or do_ckpt):
                continue
            _sync(device)
            now = time.perf_counter()
            state.train_time_s += now - mark
            session_time += now - mark
            interval_time += now - mark

            if do_log or do_eval:
                # Mean of the ranks' losses / world = the global MSE (each loss is scaled by world).
                mean_loss = float(comm.all_reduce_sum(loss_sum)) / world / interval_steps
                loss_sum.zero_()
                probe = probe_psnr()
                try:
                    back_to = guard.check(step, mean_loss, probe)
                except Diverged as e:
                    status = "diverged"
                    log.message(f"diverged: {e}; stopping with the last good state (step "
                                f"{guard.snapshot.step})")
                    record({"step": step, "event": "diverged", "probe_psnr_db": _round(probe)})
                    state.step = guard.restore()
                    break
                if back_to is not None:
                    log.message(f"divergence at step {step}: probe PSNR {probe:.2f} dB (best "
                                f"{guard.best_db:.2f} dB); rolled back to step {back_to}, learning rate x"
                                f"{schedule.scale:g}")
                    record({"step": step, "event": "rollback", "to_step": back_to, "lr_scale": schedule.scale,
                            "probe_psnr_db": _round(probe)})
                    state.step = back_to
                    interval_points, interval_steps, interval_time = 0, 0, 0.0
                    _sync(device)
                    mark = time.perf_counter()
                    continue
                psnr = evaluate() if do_eval else None
                counts = comm.all_gather_scalar(shard.num_points if rows is None else rows.numel())
                pps = interval_points / max(interval_time, 1e-9)
                entry = {"step": step, "train_time_s": round(state.train_time_s, 4), "loss": mean_loss,
                         "probe_psnr_db": _round(probe), "lr": engine.get_lr()[0], "selected": count,
                         "points_per_s": round(pps, 1),
                         "imbalance": round(float(counts.max() / counts.mean().clamp(min=1e-9)), 4)}
                if psnr is not None:
                    entry["psnr_db"] = round(psnr, 4)
                record(entry)
                eta = session_time / max(step - session_start_step, 1) * (cfg.train.steps - step)
                log.update(step, mean_loss, psnr, pps, eta)
                interval_points, interval_steps, interval_time = 0, 0, 0.0
            if do_ckpt and step < cfg.train.steps:
                save("running")
            _sync(device)
            mark = time.perf_counter()

    if stopped_by:
        save("interrupted")
        log.message(f"stopped by {signal.Signals(stopped_by).name} at step {state.step}; checkpoint saved "
                    f"in {ckpt_root}. Run the same command again to resume.")
        log.close()
        return EXIT_INTERRUPTED
    if status == "complete" and not (ckpt_root / checkpoint.tag_of(state.step)).is_dir():
        save("complete")
    log.close()
    summary = _finish(cfg, comm, store, shard, predict, run_dir, state, guard.rollbacks, status,
                      model.num_params)
    if metrics is not None:
        metrics.close()
    if comm.is_rank_zero:
        log.message(f"PSNR {summary['psnr_db']:.2f} dB  SSIM {summary['ssim']}  train time "
                    f"{summary['train_time_s']:.1f} s  -> {summary['reconstruction']}")
        if "warning" in summary:
            log.message("warning: " + summary["warning"])
    return EXIT_DIVERGED if status == "diverged" else 0


def _finish(cfg: Config, comm: Comm, store: SignalStore, shard: Shard, predict, run_dir: Path,
            state: RunState, rollbacks: int, status: str, num_params: int) -> dict:
    """Every rank renders its chunks into one Zarr store; rank 0 exports it and writes summary.json."""
    final = run_dir / "reconstruction.zarr"
    tmp = run_dir / ".reconstruction.zarr.tmp"
    if comm.is_rank_zero:
        shutil.rmtree(tmp, ignore_errors=True)
        zarr.create_array(tmp, shape=store.shape, chunks=(*store.chunk_shape, store.channels),
                          dtype="float32", fill_value=0.0)
    comm.barrier()
    out = zarr.open_array(tmp, mode="r+")
    sse = render_shard(predict, shard, store, out, cfg.teacher.score_chunk)
    sse = float(comm.all_reduce_sum(torch.tensor([sse], dtype=torch.float64)))
    comm.barrier()
    summary = {}
    if comm.is_rank_zero:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        image = export(final, run_dir / "reconstruction", cfg.render.format, store.meta["source_dtype"])
        ssim = ssim_of(zarr.open_array(final, mode="r"), store)
        psnr = psnr_db(sse, store.num_points * store.channels)
        summary = {
            "psnr_db": round(psnr, 4),
            "psnr_is": "final (not the best seen during training)",
            "ssim": None if ssim is None else round(ssim, 5),
            "train_time_s": round(state.train_time_s, 3),
            "steps": state.step,
            "world_size": comm.world_size,
            "num_params": num_params,
            "strategy": cfg.teacher.strategy,
            "signal": cfg.signal.path,
            "shape": list(store.shape),
            "reconstruction": str(image),
            "status": status,
            "rollbacks": rollbacks,
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
        rundir.atomic_write(run_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    comm.barrier()
    return summary
