"""Checkpoints as `checkpoints/step-N/` folders: DeepSpeed's files, one file of per-rank state for each
rank, and `meta.json` with the state every rank shares; `checkpoints/latest` names the newest complete one
and is replaced atomically last, so a job killed mid-save still resumes from the previous checkpoint. The
latest `keep` folders are kept.

Every stateful part implements `state_dict()` / `load_state_dict(state)`. *Shared* parts (run state, guard,
LR schedule) are the same on every rank and go into meta.json. *Chunked* parts (the teacher's cached sets)
put what ranks share into meta.json too, and the rest into one file per signal chunk through
`save_chunks(folder)` / `load_chunks(folder, state)`: each rank writes and reads only the chunks it owns,
so a checkpoint loads on any world size and no rank reads another's state (docs/design.md, "Resuming").
"""

from __future__ import annotations

import errno
import json
import shutil
from typing import Protocol

from .. import jsonio
from ..comm import Comm
from ..errors import CheckpointError
from ..rundir import RunDir, atomic_write
from .agree import agree_on_failure
from .deepspeed_engine import restore_fused

FORMAT = 3  # checkpoint layout version (3: teacher state per chunk)


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Checkpointer:
    def __init__(self, engine, run: RunDir, comm: Comm, every: int, keep: int, shared: dict[str, Stateful],
                 chunked: dict):
        self.engine, self.run, self.comm, self.every, self.keep = engine, run, comm, every, keep
        self.shared, self.chunked = shared, chunked

    def due(self, step: int, last_step: int) -> bool:
        """A periodic checkpoint at this step (the final one is written by the caller)."""
        return self.every > 0 and step % self.every == 0 and step < last_step

    def exists(self, step: int) -> bool:
        return self.run.checkpoint_meta(self.run.checkpoint(step).name).is_file()

    def holds(self, step: int, ended: str) -> bool:
        """Whether a checkpoint of this step exists and records the same end of training ("" while it
        trains): a rerun of a finished or ended run then saves nothing (rank 0 reads; every rank agrees)."""
        held = 0.0
        if self.comm.is_rank_zero:
            try:
                meta = json.loads(self.run.checkpoint_meta(self.run.checkpoint(step).name).read_text())
                held = float(meta["shared"]["run"].get("ended", "") == ended)
            except (OSError, ValueError, KeyError, TypeError):
                held = 0.0
        return bool(self.comm.agree_max([held])[0])

    def save(self, step: int, status: str) -> None:
        """Called on every rank at the same step. Written into a hidden `.step-N.partial/` folder first and
        renamed into place when complete: a checkpoint that `latest` names is never rewritten in place
        (after a divergence rollback the run passes the same step numbers again). A save that fails on any
        rank (a full disk) fails on every rank with that rank's reason, and leaves no partial folder."""
        folder = self.run.checkpoint(step)
        partial = self.run.checkpoint_partial(folder.name)
        what = f"save checkpoint {folder.name}"
        # Room first, agreed by every rank: DeepSpeed's save waits in collectives of its own, so a rank
        # whose disk fills up in the middle of it would leave the others waiting out the timeout. Then
        # every rank's files, agreed; then rank 0's meta.json and renames, agreed: every rank runs the same
        # collectives whichever part fails where.
        agree_on_failure(self.comm, self._no_room(), what, long=True)
        for part in (self._write_files, self._publish):
            error = None
            try:
                part(step, status, folder, partial)
            except Exception as e:  # noqa: BLE001 - agreed over the ranks, then raised on every rank
                error = e
            try:
                agree_on_failure(self.comm, error, what, long=True)
            except Exception:
                if self.comm.is_rank_zero:
                    shutil.rmtree(partial, ignore_errors=True)
                raise

    def _no_room(self) -> OSError | None:
        """An ENOSPC error when the disk holding the checkpoints lacks room for what all ranks write (rank
        0: the field and its Adam moments, fp32; every rank: its teacher files), with a margin. All ranks'
        needs are summed: ranks that share a disk share its free space."""
        need = 64 << 10  # meta.json, latest, DeepSpeed's small files
        if self.comm.is_rank_zero and self.engine is not None:
            need += sum(p.numel() for p in self.engine.module.parameters()) * 4 * 3
        need += sum(getattr(part, "checkpoint_bytes", lambda: 0)() for part in self.chunked.values())
        need = float(self.comm.all_gather_scalar(need).sum())
        try:
            self.run.checkpoints.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(self.run.checkpoints).free
        except OSError as e:
            return e
        if free >= need * 1.1:
            return None
        return OSError(errno.ENOSPC, f"No space left on device: checkpoints need about {need / 2**20:,.1f} MiB, "
                                     f"{free / 2**20:,.1f} MiB free; the last complete checkpoint is kept",
                       str(self.run.checkpoints))

    def _write_files(self, step: int, status: str, folder, partial) -> None:
        self.engine.save_checkpoint(str(self.run.checkpoints), tag=partial.name, client_state={"step": step},
                                    save_latest=False)
        for name, part in self.chunked.items():
            part.save_chunks(partial / name)

    def _publish(self, step: int, status: str, folder, partial) -> None:
        """Rank 0: meta.json, the folder renamed into place, `latest`, older checkpoints removed."""
        if self.comm.is_rank_zero:
            parts = {**self.shared, **self.chunked}
            meta = {"format": FORMAT, "step": step, "status": status, "world_size": self.comm.world_size,
                    "shared": {name: part.state_dict() for name, part in parts.items()}}
            atomic_write(partial / "meta.json", jsonio.dumps(meta, indent=1))  # strict JSON (dist_int/jsonio.py)
            old = folder.with_name(f".{folder.name}.old")
            moved = folder.exists()
            if moved:
                shutil.rmtree(old, ignore_errors=True)
                folder.rename(old)
            try:
                partial.rename(folder)
            except BaseException:
                if moved:  # `latest` may name it: put it back
                    old.rename(folder)
                raise
            atomic_write(self.run.latest, folder.name)
            shutil.rmtree(old, ignore_errors=True)
            for old in sorted(p for p in self.run.checkpoints.glob("step-*") if p.is_dir())[:-self.keep]:
                if old.name != folder.name:
                    shutil.rmtree(old, ignore_errors=True)

    def _intact(self, tag: str) -> bool:
        """Whether checkpoint `tag` has a readable meta.json of this format (its payload is checked by load)."""
        try:
            return json.loads(self.run.checkpoint_meta(tag).read_text()).get("format") == FORMAT
        except (OSError, ValueError, UnicodeDecodeError):
            return False

    def latest_tag(self) -> str | None:
        """The checkpoint to resume from: the one `latest` names, or, when that one is missing or damaged,
        the newest intact one (said in self.fallback_note); None when there is none."""
        self.fallback_note = None
        try:
            tag = self.run.latest_tag()
        except (OSError, UnicodeDecodeError):
            tag = "(unreadable)"
        if tag is None:
            return None
        folder = self.run.checkpoints / tag
        partial = self.run.checkpoint_partial(tag)
        if tag and not folder.exists() and (partial / "meta.json").is_file():
            try:
                partial.rename(folder)  # a save cut short between its two renames: finish it
            except OSError:
                pass  # another rank finished it first
        if tag and "/" not in tag and self._intact(tag):
            return tag
        older = sorted((p.name for p in self.run.checkpoints.glob("step-*") if p.is_dir() and self._intact(p.name)),
                       reverse=True)
        self.fallback_note = (f"checkpoints/latest names {tag!r}, which is missing or damaged; "
                              + (f"resuming from the newest intact checkpoint, {older[0]}" if older else
                                 "no intact checkpoint is left, so the run starts over from step 0"))
        return older[0] if older else None

    def load(self, tag: str) -> dict:
        """Load every part from checkpoint `tag`; returns its meta (step, status, world_size)."""
        folder = self.run.checkpoints / tag
        try:
            meta = json.loads(self.run.checkpoint_meta(tag).read_text())
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')} (this dist_int reads format {FORMAT})")
            path, _ = self.engine.load_checkpoint(str(self.run.checkpoints), tag=tag)
            if path is None:
                raise ValueError("DeepSpeed found no model state in it")
            restore_fused(self.engine.optimizer)  # a checkpoint from before the fused Adam (docs/training.md)
            for name, part in self.shared.items():
                part.load_state_dict(meta["shared"][name])
            for name, part in self.chunked.items():
                part.load_chunks(folder / name, meta["shared"][name])
        except Exception as e:  # noqa: BLE001 - any damage to the files reads as one clear error
            raise CheckpointError(f"cannot load checkpoint {folder}: {type(e).__name__}: {e}. Resume from "
                                  f"another run.dir, or delete {self.run.checkpoints} to start this run "
                                  f"over") from None
        return meta
