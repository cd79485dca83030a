"""Rank 0's progress display: a bar on a terminal, plain lines at a steady interval otherwise (SLURM, CI,
a log file), and optionally TensorBoard scalars.

Loss and PSNR are known only at log steps (reading them costs a collective and a device sync); the bar and
the plain lines show the latest known values. Plain lines come every `every_s` seconds of wall time, not
every N steps: a SLURM log then reads the same whether a step takes a millisecond or a minute.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .logs import LOGGER, show_above


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, total: int, start: int, enabled: bool, every_s: float = 30.0, tty: bool | None = None):
        self.total, self.enabled, self.every_s = total, enabled, every_s
        self.bar = None
        self.loss: float | None = None
        self.psnr: float | None = None
        self.psnr_step = 0  # the step the PSNR was measured at: lines between evaluations say which
        self.points_per_s = 0.0
        self._session = (start, time.monotonic())  # ETA from this session's own pace
        self._next_line = time.monotonic() + every_s
        tty = sys.stderr.isatty() if tty is None else tty
        if enabled and tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
            show_above(self.bar)

    def begin(self, step: int) -> None:
        """Training starts (or resumes) at `step`: the ETA counts from here."""
        self._session = (step, time.monotonic())
        self._next_line = time.monotonic() + self.every_s
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def eta_s(self, step: int) -> float:
        first, t0 = self._session
        return (time.monotonic() - t0) / max(step - first, 1) * (self.total - step)

    def _psnr(self, step: int) -> str:
        if self.psnr is None:
            return "-"
        return f"{self.psnr:.2f} dB" + ("" if self.psnr_step == step else f" (at step {self.psnr_step})")

    def line(self, step: int) -> str:
        loss = "-" if self.loss is None else f"{self.loss:.3e}"
        return (f"step {step}/{self.total}  loss {loss}  psnr {self._psnr(step)}  "
                f"{self.points_per_s / 1e6:.2f} Mpts/s  "
                f"eta {_fmt_time(self.eta_s(step))}")

    def tick(self, step: int) -> None:
        """Every step (cheap: no device read). Moves the bar, or prints a plain line when one is due."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)  # tqdm limits its own redraws
        elif time.monotonic() >= self._next_line and step < self.total:  # the last line comes from update
            self._next_line = time.monotonic() + self.every_s
            print(self.line(step), flush=True)

    def update(self, step: int, loss: float, psnr: float | None, points_per_s: float) -> None:
        """At log steps: the latest loss, PSNR (None: not evaluated at this step) and throughput."""
        self.loss, self.points_per_s = loss, points_per_s
        if psnr is not None:
            self.psnr, self.psnr_step = psnr, step
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss {loss:.3e} psnr {self._psnr(step)} {points_per_s / 1e6:.2f} Mpts/s")
        elif self.enabled and step == self.total:
            print(self.line(step), flush=True)

    def message(self, text: str) -> None:
        """A line of the run's log (logs.py), from the rank that shows progress."""
        if self.enabled:
            LOGGER.info(text)

    def warning(self, text: str) -> None:
        if self.enabled:
            LOGGER.warning(text)

    def close(self) -> None:
        if self.bar is not None:
            show_above(None)
            self.bar.close()


class Scalars:
    """TensorBoard event files in <run>/tensorboard (train.tensorboard; rank 0 only). Off, it does nothing."""

    def __init__(self, folder: Path | None, enabled: bool, start_step: int = 0):
        """start_step: the step training starts (or resumes) from; events after it from an earlier session
        are dropped, as metrics.jsonl drops its lines (steps never repeat)."""
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (config.py checks)

            self.writer = SummaryWriter(log_dir=str(folder), purge_step=start_step + 1 if start_step else None)

    def write(self, entry: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
