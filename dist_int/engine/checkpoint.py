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

import json
import shutil
from typing import Protocol

from ..comm import Comm
from ..errors import CheckpointError
from ..rundir import RunDir, atomic_write
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

    def save(self, step: int, status: str) -> None:
        """Called on every rank at the same step. Written into a hidden `.step-N.partial/` folder first and
        renamed into place when complete: a checkpoint that `latest` names is never rewritten in place
        (after a divergence rollback the run passes the same step numbers again)."""
        folder = self.run.checkpoint(step)
        partial = self.run.checkpoint_partial(folder.name)
        self.engine.save_checkpoint(str(self.run.checkpoints), tag=partial.name, client_state={"step": step},
                                    save_latest=False)
        for name, part in self.chunked.items():
            part.save_chunks(partial / name)
        self.comm.barrier()
        if self.comm.is_rank_zero:
            parts = {**self.shared, **self.chunked}
            meta = {"format": FORMAT, "step": step, "status": status, "world_size": self.comm.world_size,
                    "shared": {name: part.state_dict() for name, part in parts.items()}}
            atomic_write(partial / "meta.json", json.dumps(meta, indent=1, allow_nan=False))  # plain JSON
            old = folder.with_name(f".{folder.name}.old")
            if folder.exists():
                shutil.rmtree(old, ignore_errors=True)
                folder.rename(old)
            partial.rename(folder)
            atomic_write(self.run.latest, folder.name)
            shutil.rmtree(old, ignore_errors=True)
            for old in sorted(p for p in self.run.checkpoints.glob("step-*") if p.is_dir())[:-self.keep]:
                if old.name != folder.name:
                    shutil.rmtree(old, ignore_errors=True)
        self.comm.barrier()

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
