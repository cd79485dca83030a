"""After the last step: the reconstruction, the metrics, summary.json and the export.

A finished training is never lost (docs/design.md): the summary is written before the export, and every
part that can fail (rendering, a pyramid level, a metric, the export) becomes a warning in the summary
(`warnings`, and the part named in `missing`) instead of an error. The same command run again finds the
summary of the finished training and redoes only what is missing, without training again.

Parts, each done by every rank (or by rank 0 while the others wait) and agreed over all ranks:
  render   every rank renders its chunks into the output store (and the exact PSNR comes from it)
  metrics  the modality's metrics beyond PSNR, from the rendered output
  export   the file users open (PNG/TIFF/WAV/MP4/PLY), by rank 0
"""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import torch

from .. import jsonio
from ..comm import Comm
from ..modality import modality_for
from ..model import FieldSpec, bits_per_sample
from ..render import psnr_db, render_shard
from ..rundir import RunDir, atomic_write
from .agree import attempt, everywhere
from .metrics import memory_report
from .state import RunState

PARTS = ("render", "metrics", "export")
RETRY = "Run the same command again to finish the outputs (it does not train again)"


def previous_summary(comm: Comm, run: RunDir, step: int) -> dict | None:
    """The summary a finished run at this step wrote already (rank 0 reads it; every rank gets it)."""
    text = ""
    if comm.is_rank_zero and run.summary.is_file():
        try:
            text = run.summary.read_text()
        except OSError:
            text = ""
    text = comm.gather_strings(text, long=True)[0]
    try:
        summary = json.loads(text) if text else None
    except ValueError:
        return None  # damaged: written again whole
    return summary if summary and summary.get("steps") == step and "missing" in summary else None


def finish(parts, status: str, timings: dict | None = None, facts: dict | None = None) -> dict:
    """Write what a finished run owes its user (parts: the run's, engine/parts.py); returns the summary (the
    same on every rank). timings: seconds of earlier parts of this start (the ingest), reported with the
    outputs' own; facts: more entries for the summary (the sizes the budget chose)."""
    cfg, comm, store, shard, predict, run, state = (parts.cfg, parts.comm, parts.store, parts.shard, parts.predict,
                                                    parts.run, parts.state)
    rollbacks, spec, evaluator, log = parts.guard.rollbacks, parts.spec, parts.evaluator, parts.log
    modality = modality_for(store)
    before = previous_summary(comm, run, state.step)
    todo = set(PARTS) if before is None else set(before["missing"])
    if before is not None:
        log.message(f"{run.path} finished training at step {state.step} already; " + (
            f"doing what is missing: {', '.join(p for p in PARTS if p in todo)}" if todo else "nothing is missing"))
    if before is not None and not todo:
        return before
    if "render" in todo:  # the rest is made from the rendered output
        todo |= {"metrics", "export"}
    summary = dict(before or {})
    warnings: list[str] = []
    missing: list[str] = []
    seconds = dict(summary.get("timings_s") or {}, **(timings or {}))
    clock = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[part] = round(now - clock, 3)
        clock = now

    if "render" in todo:
        sse, problem = _render(cfg, comm, store, shard, predict, run, modality)
        if problem:
            warnings.append(problem + f"; the PSNR comes from an evaluation pass instead. {RETRY}")
            missing += ["render", "metrics", "export"]
            summary["psnr_db"] = round(evaluator.psnr(), 4)
        else:
            summary["psnr_db"] = round(psnr_db(sse, store.num_points * store.out_channels)
                                       + modality.psnr_offset_db(store), 4)
        lap("render")
    if "metrics" in todo and "render" not in missing:
        sums, problem = attempt(comm, "computing the metrics", lambda: modality.metric_sums(
            _output(run, "render" in todo), store, comm.rank, comm.world_size))
        if problem is None:
            if sums is not None:
                sums = comm.all_reduce_sum(torch.from_numpy(np.asarray(sums, dtype=np.float64))).numpy()
            extra = modality.metrics(sums, store)
            warnings += extra.pop("warnings", [])
            summary.update(extra)
        else:
            warnings.append(f"{problem}. {RETRY}")
            missing.append("metrics")
        lap("metrics")
    if "render" in todo and "render" not in missing:
        _, problem = attempt(comm, "publishing reconstruction.zarr", lambda: _publish(run), rank_zero_only=True)
        if problem:
            warnings.append(f"{problem}; move away whatever is in its place. {RETRY}")
            missing += ["render", "export"]

    summary.update(_facts(cfg, comm, store, run, state, rollbacks, status, spec, modality), **(facts or {}))
    # Only an output that is there is reported: none when the render or its publishing failed.
    summary["reconstruction"] = str(run.reconstruction_zarr) if "render" not in missing else None
    if "export" in todo and "export" not in missing:
        _write(comm, run, summary, warnings, missing + ["export"])  # the training is safe before exporting
        exported, problem = attempt(comm, "exporting the reconstruction", lambda: modality.export(
            run.reconstruction_zarr, run.reconstruction_stem, cfg.render.format, store), rank_zero_only=True)
        if problem:
            warnings.append(f"{problem}. {RETRY}")
            missing.append("export")
        elif exported is not None:
            summary["reconstruction"] = str(exported)
        lap("export")
    summary["timings_s"] = seconds  # wall seconds of the ingest and of each output part
    summary.update(memory_report(comm, shard.device))  # peaks over the whole run, export included
    return _write(comm, run, summary, warnings, missing)


def _render(cfg, comm: Comm, store, shard, predict, run: RunDir, modality) -> tuple[float, str | None]:
    """Every rank renders its chunks into a temporary output store; its pyramid levels follow. Returns
    (the sum of squared errors over all ranks, None) or (nan, the failure)."""
    tmp = run.reconstruction_tmp
    _, problem = attempt(comm, "creating the output store", lambda: (
        shutil.rmtree(tmp, ignore_errors=True), modality.create_output(tmp, store)), rank_zero_only=True)
    if problem:
        return math.nan, problem
    sse, problem = attempt(comm, "rendering", lambda: render_shard(predict, shard, modality.writer(tmp, store),
                                                                   cfg.train.eval_chunk))
    if problem:
        return math.nan, problem
    sse = float(comm.all_reduce_sum(torch.tensor([sse], dtype=torch.float64)))
    _, problem = attempt(comm, "rendering the output beyond the signal's points", lambda: modality.render_extra(
        predict, tmp, store, comm.rank, comm.world_size, shard.device, shard.target_range))
    for level in range(1, modality.num_levels(tmp) if problem is None else 1):
        _, problem = attempt(comm, f"building output level {level}", lambda: modality.build_level(
            tmp, level, comm.rank, comm.world_size))
        if problem:
            break
    return (math.nan, problem) if problem else (sse, None)


def _output(run: RunDir, fresh: bool):
    """The rendered output: still in its temporary folder when rendered just now."""
    return run.reconstruction_tmp if fresh else run.reconstruction_zarr


def _publish(run: RunDir) -> None:
    final = run.reconstruction_zarr
    shutil.rmtree(final, ignore_errors=True)
    run.reconstruction_tmp.rename(final)


def _facts(cfg, comm: Comm, store, run: RunDir, state: RunState, rollbacks: int, status: str, spec: FieldSpec,
           modality) -> dict:
    """What the summary says besides the metrics."""
    lo, hi = modality.psnr_range(store)
    facts = {
        "psnr_is": f"final (not the best seen during training), with data range {hi - lo:g} on the source's "
                   f"values [{lo:g}, {hi:g}]",
        "kind": store.kind,
        # The range the values were normalized by (signal.value_range) and the data's own.
        "value_range": list(store.value_range),
        "value_range_is": cfg.signal.value_range if isinstance(cfg.signal.value_range, str) else "config",
        "data_range": store.meta.get("data_range"),
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
        "status": status,
        "rollbacks": rollbacks,
        # The PSNR of an error spread over one step of the stored values: above it, PSNRs measure float
        # rounding, not the fit (docs/training.md, "Exact fits and NaN fields").
        "precision_psnr_db": round(modality.exact_psnr_db(store), 4),
    }
    if state.ended == "precision":
        facts["ended"] = (f"at step {state.step} of {cfg.train.steps}: the field fit the signal at the data's "
                          f"precision, and further steps only moved it away")
    if state.best_psnr_db > -math.inf:  # evaluated at least once (+inf: an exact fit, written as null)
        facts.update(best_psnr_db=round(state.best_psnr_db, 4), best_step=state.best_step)
    return facts


def _write(comm: Comm, run: RunDir, summary: dict, warnings: list[str], missing: list[str]) -> dict:
    """summary.json with its warnings: strict JSON (a PSNR beyond the float range is null, named under
    not_finite; dist_int/jsonio.py). Rank 0 writes, every rank agrees on the outcome (a failed write is
    one error on every rank) and returns the same dict."""
    summary = dict(summary)
    notes = list(warnings)
    psnr, best = summary.get("psnr_db"), summary.get("best_psnr_db")
    words = summary.get(jsonio.NOT_FINITE) or {}
    best = math.inf if best is None and words.get("best_psnr_db") == "inf" else best
    cap = summary.get("precision_psnr_db") or math.inf  # beyond the data's precision, no PSNR is worse
    if psnr is not None and best is not None and min(psnr, cap) < min(best, cap) - 0.05:  # never worse unsaid
        notes.append(f"final PSNR {psnr:.2f} dB is below the best evaluated, {best:.2f} dB at step "
                     f"{summary['best_step']}")
    was = (summary.get(jsonio.NOT_FINITE) or {}).get("psnr_db")  # a rerun's summary, read back: null + its name
    if psnr == math.inf or (psnr is None and was == "inf"):
        summary["psnr_is"] = ("infinite (written as null): the reconstruction equals the signal exactly, at its "
                              "stored precision; otherwise " + summary.get("psnr_is", ""))
    elif psnr is not None and math.isnan(psnr):
        notes.append("the reconstruction's PSNR is not a number: the field's output is NaN or infinite at "
                     "some points")
    if summary["status"] == "diverged":
        notes.append("training diverged and stopped early; the reconstruction is the last good state")
    summary["warnings"], summary["missing"] = notes, sorted(set(missing), key=PARTS.index)
    summary.pop("warning", None)  # the single warning of older summaries
    text = jsonio.dumps(summary, indent=1) + "\n"
    everywhere(comm, "write summary.json", lambda: atomic_write(run.summary, text), rank_zero_only=True)
    return json.loads(text)  # what the file holds: the same dict on every rank
