"""The run folder (docs/design.md, "The run folder"): the one class that knows every path in it.

    config.toml  metrics.jsonl  summary.json  signal.zarr/  reconstruction.zarr/  reconstruction.png|tif
    checkpoints/step-N/ + checkpoints/latest   snapshots/step-N/rank-R.npz   tensorboard/

The same command on the same folder resumes; a different config on it is refused unless asked.
Files are written to a temporary name and renamed, so nothing is ever half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import tomllib
from pathlib import Path

from .config import Config, diff_configs
from .errors import RunDirError
from .files import atomic_write, create_exclusive

# Keys that may differ between the run that made a folder and the one resuming it (run.dir: the folder
# may have been moved or copied). Progress, snapshots and TensorBoard change what is shown, not the result.
# Keys that decide how the signal was ingested into the run folder: not even allow_config_change may change
# them, since the store keeps what they made.
INGEST_KEYS = ("signal.chunk", "signal.points", "signal.sdf")
RESUME_FREE_KEYS = ("run.dir", "run.resume", "run.allow_config_change", "train.progress_every_s",
                    "train.tensorboard", "train.snapshot_every",
                    "model.encoding")  # the same field and numbers, up to fp32 rounding (docs/fields.md)


def status_of(summary: dict | None) -> str:
    """What a run folder shows in `collect` and `report`: its summary's status, "complete-with-warnings"
    when an export or a metric failed after training, "not finished" without a summary.json."""
    if summary is None:
        return "not finished"
    status = str(summary.get("status", "complete"))
    return f"{status}-with-warnings" if status == "complete" and summary.get("warnings") else status


def _with_defaults(saved: dict, defaults: dict) -> dict:
    """A saved config with the keys it lacks (added to dist_int after it was written) at their defaults."""
    out = dict(defaults)
    for key, value in saved.items():
        out[key] = _with_defaults(value, defaults[key]) if isinstance(value, dict) and isinstance(
            defaults.get(key), dict) else value
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(v)  # a JSON string is a valid TOML basic string


def to_toml(data: dict) -> str:
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    sections = [f"\n[{k}]\n" + "\n".join(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
                for k, v in data.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(sections) + "\n"


class RunDir:
    CONFIG = "config.toml"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_changed = True  # whether config.toml must be (re)written; set by `check`
        self.training = False  # set once setup is done and the config saved: the folder is a run now
        self.created = False   # set by the start that made the folder (and holds its lock)
        self.lock_note: str | None = None  # a warning for the log: an unreadable lock was taken over

    # Every path in the folder.
    @property
    def config(self) -> Path:
        return self.path / self.CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def signal_store(self) -> Path:
        """Where an image file given as signal.path is ingested."""
        return self.path / "signal.zarr"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plan(self) -> Path:
        """The batch plan the run was sized to (engine/sizing.py): a resume keeps it."""
        return self.path / "plan.json"

    def guard_state(self, rank: int) -> Path:
        """The divergence guard's last good state of `rank`, where it is kept on disk (engine/guard.py);
        removed when the run ends."""
        return self.path / "guard" / f"rank-{rank:05d}.pt"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:08d}"

    def checkpoint_partial(self, tag: str) -> Path:
        """Where checkpoint `tag` is written before it is renamed into place."""
        return self.checkpoints / f".{tag}.partial"

    def checkpoint_meta(self, tag: str) -> Path:
        return self.checkpoints / tag / "meta.json"

    def latest_tag(self) -> str | None:
        """The tag `latest` names, or None."""
        return self.latest.read_text().strip() if self.latest.is_file() else None

    @property
    def snapshots(self) -> Path:
        return self.path / "snapshots"

    def snapshot(self, step: int) -> Path:
        """The teaching set used for the update after `step` steps, one file per rank (teacher/snapshot.py)."""
        return self.snapshots / f"step-{step:08d}"

    def snapshot_steps(self) -> list[int]:
        """Steps that have a snapshot folder, in order."""
        if not self.snapshots.is_dir():
            return []
        return sorted(int(d.name[5:]) for d in self.snapshots.glob("step-*") if d.name[5:].isdigit())

    def drop_snapshots(self, from_step: int) -> None:
        """Remove snapshots of steps >= from_step: a resumed run (on any number of ranks) writes them anew."""
        for step in self.snapshot_steps():
            if step >= from_step:
                shutil.rmtree(self.snapshot(step), ignore_errors=True)

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def reconstruction_zarr(self) -> Path:
        return self.path / "reconstruction.zarr"

    @property
    def reconstruction_tmp(self) -> Path:
        return self.path / ".reconstruction.zarr.tmp"

    @property
    def reconstruction_stem(self) -> Path:
        """reconstruction.png or reconstruction.tif, by the export format."""
        return self.path / "reconstruction"

    # The lock: one run at a time in a folder (docs/design.md, "The run folder").
    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    def _holder(self) -> dict | None:
        """The lock's holder {host, pid, started}, or None when there is no lock or it is stale (its
        process, on this host, is gone; or it cannot be read: locks are written whole, so an empty or
        damaged one was left by a start that failed while writing it, e.g. on a full disk)."""
        try:
            holder = json.loads(self.lock.read_text())
            if not isinstance(holder, dict):
                raise ValueError(f"{type(holder).__name__}, not an object")
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            self.lock_note = (f"{self.lock} could not be read ({e or 'empty'}), so no run can be shown to hold "
                              f"it; taken over as stale")
            return None
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job") == job:
            return None  # this SLURM job, requeued (possibly on another node): its earlier run is over
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return None  # crashed or killed: the lock is stale
            except (PermissionError, ValueError, KeyError, TypeError):
                pass
        return holder

    def _refuse_if_locked(self) -> None:
        holder = self._holder()
        if holder is not None and not (holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()):
            raise RunDirError(f"run.dir {self.path} is in use by process {holder.get('pid')} on host "
                              f"{holder.get('host')} (since {holder.get('started')}); wait for it to finish or "
                              f"stop it, or choose another run.dir. If that process is gone, delete {self.lock}")

    def acquire_lock(self) -> None:
        """Take the folder for this run (rank 0, before it writes anything); a stale lock is taken over
        (`lock_note` then says so when it could not be read)."""
        text = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "slurm_job": os.environ.get("SLURM_JOB_ID")})
        if create_exclusive(self.lock, text):
            return
        self._refuse_if_locked()
        atomic_write(self.lock, text)  # stale: its holder is gone
        self._refuse_if_locked()  # another start took it over at the same moment

    def release_lock(self) -> None:
        try:
            holder = json.loads(self.lock.read_text())
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.lock.unlink()
        except (OSError, ValueError):
            pass

    # Checks and writes.
    def check(self, cfg: Config, judge_lock: bool = True) -> bool:
        """Read-only, run by every rank before anything is written. True when the folder holds an earlier
        run of this config that will be resumed. judge_lock: refuse a folder locked by a live process
        (rank 0 only: whether a lock is stale can be told only on the host of the process that took it,
        and rank 0 is the one that takes it; another host would refuse a stale lock it cannot check)."""
        if not self.path.exists():
            return False
        if not self.path.is_dir():
            raise RunDirError(f"run.dir {self.path} is a file; choose a folder path")
        if judge_lock:
            self._refuse_if_locked()
        if not [p for p in self.path.iterdir() if p.name != self.lock.name]:
            return False
        if not self.config.is_file():
            raise RunDirError(f"run.dir {self.path} is not empty and holds no dist_int run ({self.CONFIG} "
                              f"missing); choose a new run.dir so that nothing in it is overwritten")
        try:
            saved = tomllib.loads(self.config.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"{self.config} is not valid TOML ({e}); choose a new run.dir") from None
        saved = _with_defaults(saved, Config().to_dict())
        changed = [d for d in diff_configs(saved, cfg.to_dict()) if not d.startswith(RESUME_FREE_KEYS)]
        self.config_changed = bool(changed)
        fixed = [d for d in changed if d.startswith(INGEST_KEYS)]
        if fixed and self.signal_store.exists():
            raise RunDirError(
                f"run.dir {self.path} holds its signal as ingested with the first config, and these keys shape "
                f"that store:\n  " + "\n  ".join(fixed) + "\nrun.allow_config_change cannot change them (the chunks "
                "are the unit of sharding and of the teacher's saved state): use a new run.dir")
        if changed and not cfg.run.allow_config_change:
            raise RunDirError(
                f"run.dir {self.path} belongs to a run with a different config:\n  " + "\n  ".join(changed)
                + "\nUse a new run.dir, or set run.allow_config_change=true to resume it with this config.")
        has_checkpoint = self.latest.is_file()
        if has_checkpoint and not cfg.run.resume:
            raise RunDirError(f"run.dir {self.path} holds checkpoints and run.resume=false; choose a new "
                              f"run.dir or drop run.resume=false to resume")
        return has_checkpoint

    def write_config(self, cfg: Config) -> None:
        """Save the resolved config: for a new run, or one resumed with run.allow_config_change."""
        if self.config_changed or not self.config.is_file():
            atomic_write(self.config, to_toml(cfg.to_dict()))
