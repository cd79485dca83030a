"""The training loop: each step the teacher picks this rank's part of the global teaching set and the field
trains on it. Every other part decides its own timing (docs/design.md, "Ranks agree before they act"):
the stop flag agrees every STOP_CHECK_EVERY steps, the log every train.log_every, the evaluator every
train.eval_every, the checkpointer every checkpoint.every, the snapshots every train.snapshot_every; the
divergence guard judges at log steps and may roll the run back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
from dataclasses import dataclass

from ..comm import Comm
from .agree import everywhere
from ..census import SyncCensus, optimizer_host_tensors
from .guard import AtPrecision, Diverged
from .watchdog import peer_lost
from .metrics import SectionTimer, Throughput, memory_report, rounded

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOP_CHECK_EVERY = 10  # steps between stop-flag agreements (a host-only collective, no device sync)


class Interrupted(BaseException):
    """A stop signal while the outputs are written (StopFlag.interrupting): not an Exception, so the
    attempts that turn failures into warnings (engine/agree.py) let it through."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopFlag:
    """Signal handlers only set a flag; the ranks agree on the step to stop at through one collective.
    After training (`interrupting`), a signal raises Interrupted at once instead."""

    def __init__(self, comm: Comm):
        self.comm, self.signum, self._previous = comm, 0, {}
        self._raise = False

    @contextlib.contextmanager
    def interrupting(self):
        """Within this block a stop signal raises Interrupted; one that came during the last steps (after
        the last agreement) raises it on entry, on every rank (agreed through one collective)."""
        pending = int(self.comm.agree_max([self.signum])[0])
        if pending:
            raise Interrupted(pending)
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def __enter__(self):
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C quits at once
        self.signum = signum
        if self._raise:
            raise Interrupted(signum)

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)

    def agreed(self, step: int) -> int:
        """The signal any rank got (0: none), checked every STOP_CHECK_EVERY steps on every rank."""
        if step % STOP_CHECK_EVERY:
            return 0
        return int(self.comm.agree_max([self.signum])[0])


@dataclass
class Outcome:
    status: str = "complete"   # complete or diverged
    stopped_by: int = 0        # the signal the ranks stopped for (0: none)


class Loop:
    """Runs steps from state.step to train.steps. Holds the parts; the logging, evaluation and rollback of
    a log step are `_report`, the rest is `run`."""

    def __init__(self, parts, metrics, scalars, snapshots, stop: StopFlag, reuse_scores: bool):
        """parts: the run's named parts (engine/parts.py); metrics, scalars, snapshots, stop: what this
        loop writes to and listens to (opened and closed by the trainer)."""
        p = parts
        cfg, comm, run, shard = p.cfg, p.comm, p.run, p.shard
        self.cfg, self.comm, self.run_dir, self.shard, self.plan = cfg, comm, run, shard, p.plan
        self.teacher, self.train_step, self.evaluator, self.guard, self.ckpt = (p.teacher, p.train_step, p.evaluator,
                                                                              p.guard, p.ckpt)
        self.state, self.score, self.engine, self.schedule, self.log = p.state, p.score, p.engine, p.schedule, p.log
        self.metrics, self.scalars, self.snapshots, self.stop = metrics, scalars, snapshots, stop
        # An evaluation may hand its per-point errors to the selection of the next step: valid when it
        # scores the same rows with the same model at the same precision (docs/method.md, "Cheaper
        # selection"). Its time is then training (and selection) time.
        self.reuse_scores = reuse_scores
        self.watchdog = p.watchdog  # a lost peer ends the process (engine/watchdog.py); told the step for its message
        self.census = None
        if cfg.train.sync_census:  # closed with the process
            path = run.path / "census" / f"rank-{comm.rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.census = open(path, "a")
        self.meter = Throughput(shard.device)
        self.selecting = SectionTimer(shard.device)
        self.reusing = SectionTimer(shard.device)

    def _due(self, every: int, step: int) -> bool:
        return every > 0 and step % every == 0

    def run(self) -> Outcome:
        """The steps; a collective that fails because a peer is gone (in a step, a log line, a stop
        agreement or a checkpoint) ends this process with one line naming the hosts (engine/watchdog.py)."""
        try:
            return self._run()
        except RuntimeError as e:
            if peer_lost(e):  # one line that names the lost hosts, not a traceback per rank
                self.watchdog.lost(f"a collective failed ({str(e).splitlines()[-1][:200]})")
            raise

    def _run(self) -> Outcome:
        cfg, state = self.cfg, self.state
        last = cfg.train.steps
        self.guard.start(state.step)  # the state we start (or resume) from is the first good one
        self.log.begin(state.step)
        self.meter.start()
        while state.step < last and not state.ended:
            stopped_by = self.stop.agreed(state.step)
            if stopped_by:
                return Outcome(stopped_by=stopped_by)
            batch = self._step()
            step = state.step
            do_log = self._due(cfg.train.log_every, step) or step == last
            do_eval = self._due(cfg.train.eval_every, step)
            do_ckpt = self.ckpt.due(step, last)
            if not (do_log or do_eval or do_ckpt):
                continue
            self._account()
            if do_log or do_eval:
                rolled_back = self._report(step, batch, do_eval)
                if state.ended:
                    break
                if rolled_back:
                    continue
            if do_ckpt:
                self.ckpt.save(step, "running")
            self.meter.start()
        return Outcome(status="diverged" if state.ended == "diverged" else "complete")

    def _step(self):
        """One update: select (or reuse) the teaching set, maybe snapshot it, train on it; with
        train.sync_census, counted (dist_int/census.py)."""
        self.watchdog.phase = f"at step {self.state.step}"
        return self._counted()

    def _counted(self):
        if self.census is None:
            return self._update()
        step, selects = self.state.step, self.teacher.selects_at(self.state.step)
        census = SyncCensus(self.shard.device, where=True)
        census.mark_host(optimizer_host_tensors(self.engine.optimizer))
        with census:
            batch = self._update()
        self.census.write(json.dumps({"step": step, "selected": selects, "syncs": census.syncs,
                                      "kinds": dict(census.counts), "ops": census.ops,
                                      "where": {f"{k} @ {w}": n for (k, w), n in census.where.items()}}) + "\n")
        self.census.flush()
        return batch

    def _update(self):
        state, shard = self.state, self.shard
        shard.stage(self.plan, state.step)  # a streamed shard swaps in this batch's chunks (read ahead)
        with self.selecting:
            batch = self.teacher.teaching_set(state.step, shard, self.score)
        if self.snapshots is not None and self._due(self.cfg.train.snapshot_every, state.step):
            self.meter.pause()  # not training time; every rank resumes the clock together
            everywhere(self.comm, "write its teaching-set snapshot", functools.partial(
                self.snapshots.write, self.run_dir.snapshot(state.step), self.comm.rank, self.comm.world_size,
                batch.rows, batch.count, self.cfg.teacher.strategy))
            self.meter.start()
        self.train_step(shard.coords(batch.rows), shard.targets(batch.rows), batch.count, batch.max_rows,
                        batch.weights, batch.weight_sum)
        if self.teacher.observes:  # the replay record takes the errors the step's forward measured
            self.teacher.observe(shard.all_rows() if batch.rows is None else batch.rows, self.train_step.errors)
        self.meter.add(batch.count)
        state.step += 1
        self.log.tick(state.step)
        return batch

    def _account(self) -> None:
        """Add the interval's training and selection time to the run state (an evaluation that scored for
        a selection did the selection's work: its time counts as both)."""
        reused_s = self.reusing.read()
        self.seconds = self.meter.lap() + reused_s
        self.select_s = self.selecting.read() + reused_s
        self.state.train_time_s += self.seconds
        self.state.select_time_s += self.select_s

    def _report(self, step: int, batch, do_eval: bool) -> bool:
        """A log step: the guard's judgement (True: rolled back), the evaluation, one metrics line."""
        comm, state = self.comm, self.state
        mean_loss = self.train_step.mean_loss(comm)
        probe = self.evaluator.probe_psnr()
        try:
            back_to = self.guard.check(step, mean_loss, probe)
        except (Diverged, AtPrecision) as e:
            # Training ends with the last good state (a training outcome, not an error): the final checkpoint
            # records why, so the same command run again only finishes the outputs.
            state.ended = "diverged" if isinstance(e, Diverged) else "precision"
            good = self.guard.snapshot.step
            self.log.message(f"diverged: {e}; stopping with the last good state (step {good})" if state.ended ==
                             "diverged" else f"stopping at the data's precision: {e}; the field keeps that state")
            self.metrics.write({"step": step, "event": state.ended, "to_step": good, "loss": mean_loss,
                                "probe_psnr_db": rounded(probe)})
            state.step = self.guard.restore()
            return True
        if back_to is not None:
            self.log.message(f"divergence at step {step}: probe PSNR {probe:.2f} dB (best {self.guard.best_db:.2f} "
                             f"dB); rolled back to step {back_to}, learning rate x{self.schedule.scale:g}")
            self.metrics.write({"step": step, "event": "rollback", "to_step": back_to,
                                "lr_scale": self.schedule.scale, "probe_psnr_db": rounded(probe)})
            state.step = back_to
            self.meter.reset()
            self.reusing.read()
            self.log.begin(back_to)
            self.meter.start()
            return True
        psnr = None
        if do_eval and self.reuse_scores and step < self.cfg.train.steps and self.teacher.wants_scores(step):
            with self.reusing:
                psnr, scores = self.evaluator.psnr_and_scores(self.teacher.error, self.cfg.teacher.score_chunk)
            self.teacher.offer_scores(step, scores)
        elif do_eval:
            psnr = self.evaluator.psnr()
        if psnr is not None and psnr > state.best_psnr_db:
            state.best_psnr_db, state.best_step = psnr, step
        local = self.shard.num_points if batch.rows is None else batch.rows.numel()
        counts = comm.all_gather_scalar(local)
        selections, sent, reused = self.teacher.selection_stats()
        entry = {"step": step, "train_time_s": round(state.train_time_s, 4), "loss": mean_loss,
                 "probe_psnr_db": rounded(probe), "lr": self.engine.get_lr()[0], "selected": batch.count,
                 "points_per_s": round(self.meter.points_per_s(), 1),
                 "imbalance": round(float(counts.max() / counts.mean().clamp(min=1e-9)), 4),
                 # Bytes each rank sent per selection: a constant (docs/design.md, "Exact global
                 # selection"), whatever the signal's size and the number of ranks.
                 "selections": selections, "select_bytes": sent // max(selections, 1),
                 # The teacher's share of the training time since the last line (scoring and selection),
                 # and selections that took an evaluation's scores instead of scoring.
                 "select_fraction": round(self.select_s / max(self.seconds, 1e-9), 4),
                 "scores_reused": reused}
        if psnr is not None:
            entry["psnr_db"] = round(psnr, 4)
        if self.cfg.train.compile:  # graphs compiled so far: constant after warm-up (model/infer.py, padded)
            import torch._dynamo

            entry["graphs"] = int(comm.agree_max([torch._dynamo.utils.counters["stats"]["unique_graphs"]])[0])
        entry.update(memory_report(comm, self.shard.device))
        self.metrics.write(entry)
        self.scalars.write(entry, step)
        self.log.update(step, mean_loss, psnr, self.meter.points_per_s())
        self.meter.reset()
        return False
