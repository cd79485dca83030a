"""The run folder (DESIGN.md sec. 5): resolved config, metrics.jsonl, summary.json, reconstruction,
checkpoints. The same command on the same folder resumes; a different config on it is refused unless asked.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from .config import Config, diff_configs

CONFIG_FILE = "config.toml"
# Keys that may differ between the run that made a folder and the one resuming it.
RESUME_FREE_KEYS = ("run.resume", "run.allow_config_change")


class RunDirError(ValueError):
    """The run folder cannot be used as asked; the message says why and what to do."""


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


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_run_dir(cfg: Config) -> bool:
    """Read-only check, run by every rank before anything is written. Returns True when the folder holds
    an earlier run of this config that will be resumed."""
    run_dir = Path(cfg.run.dir)
    if not run_dir.exists():
        return False
    if not run_dir.is_dir():
        raise RunDirError(f"run.dir {run_dir} is a file; choose a folder path")
    if not any(run_dir.iterdir()):
        return False
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file():
        raise RunDirError(f"run.dir {run_dir} is not empty and holds no dist_int run ({CONFIG_FILE} "
                          f"missing); choose a new run.dir so that nothing in it is overwritten")
    try:
        saved = tomllib.loads(saved_path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise RunDirError(f"{saved_path} is not valid TOML ({e}); choose a new run.dir") from None
    changed = [d for d in diff_configs(saved, cfg.to_dict()) if not d.startswith(RESUME_FREE_KEYS)]
    if changed and not cfg.run.allow_config_change:
        raise RunDirError(
            f"run.dir {run_dir} belongs to a run with a different config:\n  " + "\n  ".join(changed)
            + "\nUse a new run.dir, or set run.allow_config_change=true to resume it with this config.")
    has_checkpoint = (run_dir / "checkpoints" / "latest").is_file()
    if has_checkpoint and not cfg.run.resume:
        raise RunDirError(f"run.dir {run_dir} holds checkpoints and run.resume=false; choose a new run.dir "
                          f"or drop run.resume=false to resume")
    return has_checkpoint


def write_config(cfg: Config) -> None:
    atomic_write(Path(cfg.run.dir) / CONFIG_FILE, to_toml(cfg.to_dict()))


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop metric lines past the checkpoint: those steps are trained again."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    atomic_write(path, "".join(line + "\n" for line in keep))
