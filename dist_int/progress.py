"""Rank 0's progress display: a bar on a terminal, plain lines otherwise (logs, CI, SLURM)."""

from __future__ import annotations

import sys


def _fmt_time(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, psnr: float | None, points_per_s: float, eta_s: float) -> None:
        if not self.enabled:
            return
        psnr_txt = f"{psnr:.2f} dB" if psnr is not None else "-"
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(f"loss {loss:.3e} psnr {psnr_txt} {points_per_s / 1e6:.2f} Mpts/s")
            self.bar.refresh()
        else:
            print(f"step {step}/{self.total}  loss {loss:.3e}  psnr {psnr_txt}  "
                  f"{points_per_s / 1e6:.2f} Mpts/s  eta {_fmt_time(eta_s)}", flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
