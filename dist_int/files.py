"""Files written whole or not at all (docs/design.md, "The run folder": nothing is ever half-written).

Every file a run writes goes to a temporary name beside its destination and is renamed into place once
complete; a write that fails (a full disk, a stop signal) removes its temporary file again, so a failure
leaves neither a half-written file nor debris that a rerun would trip over.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to a temporary name beside `path`, then rename it into place: readers see the old file or
    the new one, never half of one. A failed write (a full disk) removes its temporary file again."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def create_exclusive(path: Path, text: str) -> bool:
    """Create `path` holding `text`, whole, unless it exists (False). Written under a temporary name and
    hard-linked into place, so no reader ever finds it empty or half-written, even when the disk fills up
    meanwhile; file systems without hard links get an exclusive create, removed again if its write fails."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
    finally:
        discard(tmp)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except BaseException:
        discard(path)
        raise
    return True


@contextlib.contextmanager
def replaced_when_done(dest: Path, suffix: str = ".tmp"):
    """Yields a temporary path beside `dest` (ending in `suffix`, for writers that choose a format by the
    name) for the block to write; renamed onto `dest` when the block succeeds, removed when it fails."""
    tmp = dest.with_name(f".{dest.name}{suffix}")
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        discard(tmp)
        raise
