"""How a training ends when the numbers leave the ordinary: an exact fit (infinite PSNR or SNR), a field
that turns NaN, a guard near the data's precision. Every such run keeps a strict-JSON summary.json and
metrics.jsonl, and its outputs; a rerun finishes, never crashes or trains again."""

import json
import math
import subprocess
import sys
import types

import pytest
import torch

from conftest import ROOT, run_train


def strict_load(text: str):
    """json.loads that refuses NaN and Infinity, as strict JSON readers (jq, JavaScript) do."""
    def refuse(word):
        raise ValueError(f"not strict JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def strict_lines(path):
    return [strict_load(line) for line in path.read_text().splitlines()]


# ---- the strict JSON writer -------------------------------------------------------------------------

def test_non_finite_numbers_are_written_as_null_and_named():
    from dist_int import jsonio

    text = jsonio.dumps({"step": 3, "loss": math.nan, "psnr_db": math.inf, "nested": {"x": [1.0, -math.inf]}})
    record = strict_load(text)
    assert record["loss"] is None and record["psnr_db"] is None and record["nested"]["x"] == [1.0, None]
    assert record["not_finite"] == {"loss": "nan", "psnr_db": "inf", "nested.x[1]": "-inf"}
    assert strict_load(jsonio.dumps({"a": 1.5})) == {"a": 1.5}  # nothing to name: no not_finite key
    # A record read back (null + its name) keeps the name while the value stays null, and drops it once a
    # rerun computes a finite number there.
    back = strict_load(text)
    assert jsonio.finite(back)[1] == {} and strict_load(jsonio.dumps(back))["not_finite"]["psnr_db"] == "inf"
    back["psnr_db"] = 42.0
    assert "psnr_db" not in strict_load(jsonio.dumps(back))["not_finite"]


def test_a_best_psnr_of_inf_survives_a_checkpoint():
    """An exact fit's best PSNR (+inf) was saved as null and read back as "none yet" (-inf)."""
    from dist_int import jsonio
    from dist_int.engine.state import RunState

    state = RunState(step=5, best_psnr_db=math.inf, ended="precision")
    back = RunState()
    back.load_state_dict(strict_load(jsonio.dumps(state.state_dict())))
    assert back.best_psnr_db == math.inf and back.ended == "precision" and back.step == 5
    back.load_state_dict({"best_psnr_db": None})  # a checkpoint from before: "none yet"
    assert back.best_psnr_db == -math.inf


# ---- the divergence guard near the data's precision ---------------------------------------------------

def _guard(divergence_db=10.0, exact_db=107.1, max_rollbacks=5, place="memory", spill=None):
    from dist_int.engine.deepspeed_engine import CosineLR
    from dist_int.engine.guard import DivergenceGuard

    module = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    schedule = CosineLR(1000, 1e-2, 1e-6)
    engine = types.SimpleNamespace(module=module, optimizer=optimizer,
                                   lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))
    teacher = types.SimpleNamespace(rollback_state=lambda: None, restore_rollback_state=lambda state: None)
    guard = DivergenceGuard(engine, schedule, teacher, divergence_db, 0.5, max_rollbacks, exact_db, place, spill)
    guard.start(0)
    return guard, module


@pytest.mark.parametrize("place", ["memory", "host", "disk"])
def test_a_rollback_restores_the_same_state_from_each_place_the_guard_keeps_it(tmp_path, place):
    """The guard's last good state (weights, both Adam moments) is kept beside the field, in host memory,
    or in a file (engine/budget.py, guard_place): a rollback restores it exactly from each; later steps do
    not change the kept state; the file goes when the run ends."""
    guard, module = _guard(place=place, spill=tmp_path / "guard" / "rank-00000.pt")
    optimizer = guard.engine.optimizer

    def step():
        optimizer.zero_grad()
        module(torch.randn(8, 2)).square().mean().backward()
        optimizer.step()

    torch.manual_seed(0)
    for _ in range(3):
        step()
    assert guard.check(100, 1e-3, 30.0) is None  # a good state: kept
    good = {k: v.clone() for k, v in module.state_dict().items()}
    moments = [t.clone() for st in optimizer.state.values() for t in (st["exp_avg"], st["exp_avg_sq"])]
    for _ in range(3):
        step()
    assert guard.check(200, 1e-3, 5.0) == 100  # a collapse: back to step 100
    assert all(torch.equal(module.state_dict()[k], v) for k, v in good.items())
    assert all(torch.equal(a, b) for a, b in zip(
        moments, [t for st in optimizer.state.values() for t in (st["exp_avg"], st["exp_avg_sq"])]))
    step()  # training on from the restored state must not write into the kept one
    assert guard.check(300, 1e-3, 4.0) == 100 and all(torch.equal(module.state_dict()[k], v) for k, v in good.items())
    assert (tmp_path / "guard" / "rank-00000.pt").exists() == (place == "disk")
    guard.close()
    assert not (tmp_path / "guard").exists()


def test_the_guard_state_leaves_memory_when_it_would_crowd_the_budget():
    from dist_int.engine.budget import GUARD_COPIES, STATE_COPIES, guard_place, state_bytes

    cpu = torch.device("cpu")
    assert guard_place(cpu, 1000, 1 << 30) == "memory" and guard_place(cpu, 50_000_000, 1536 << 20) == "disk"
    assert state_bytes(cpu, 1000, 1 << 30) == 1000 * 4 * (STATE_COPIES + GUARD_COPIES)
    assert state_bytes(cpu, 50_000_000, 1536 << 20) == 50_000_000 * 4 * STATE_COPIES
    assert guard_place(torch.device("cuda"), 1000, 1 << 30) == "host"
    # The outputs' buffers count: a guard that would fit the budget alone goes to disk when the buffers and
    # the field's own state leave too little (a 1 Gpx image's render buffers).
    params, total = 10_000_000, 806 << 20
    assert guard_place(cpu, params, total) == "memory" and guard_place(cpu, params, total, 291 << 20) == "disk"
    assert state_bytes(cpu, params, total, 291 << 20) == params * 4 * STATE_COPIES


def test_psnrs_beyond_the_data_precision_are_not_divergences():
    """A 16-bit signal (ceiling 107.1 dB) fit to float rounding: 180 dB, +inf and 100 dB are all at the
    precision floor; 60 dB is a drop from it."""
    guard, _ = _guard()
    for step, psnr in ((100, 60.0), (200, 180.0), (300, math.inf), (400, 100.0), (500, 170.0)):
        assert guard.check(step, 1e-12, psnr) is None, (step, psnr)
    assert guard.best_db == pytest.approx(107.1) and guard.rollbacks == 0


def test_a_drop_from_an_exact_state_ends_training_with_that_state():
    from dist_int.engine.guard import AtPrecision

    guard, module = _guard()
    guard.check(100, 1e-12, 150.0)  # at the ceiling: the snapshot is exact
    exact = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module.weight.add_(1.0)
    with pytest.raises(AtPrecision, match="fits the signal at the data's precision"):
        guard.check(200, 1e-9, 64.0)
    assert guard.restore() == 100 and guard.rollbacks == 0
    assert all(torch.equal(module.state_dict()[k], v) for k, v in exact.items())


def test_a_drop_below_an_inexact_best_still_rolls_back():
    guard, _ = _guard()
    guard.check(100, 1e-6, 40.0)
    assert guard.check(200, 1e-4, 25.0) == 100 and guard.rollbacks == 1  # a collapse: rolled back


def test_a_nan_field_stops_at_once_when_the_check_is_off_and_rolls_back_when_on():
    from dist_int.engine.guard import Diverged

    guard, module = _guard(divergence_db=0.0)
    guard.check(100, 1e-3, 20.0)  # with the check off, every finite state is a good state
    with pytest.raises(Diverged, match="allows no rollback"):
        guard.check(200, math.nan, math.nan)
    assert guard.restore() == 100
    guard, _ = _guard(divergence_db=10.0)
    guard.check(100, 1e-3, 20.0)
    assert guard.check(200, math.nan, 20.0) == 100  # a NaN loss is a divergence even with a fine probe
    guard, _ = _guard(divergence_db=0.0)
    guard.check(100, 1e-12, 150.0)  # an exact state: a NaN after it is still a divergence, not "at precision"
    with pytest.raises(Diverged):
        guard.check(200, math.nan, math.nan)


# ---- whole runs -------------------------------------------------------------------------------------

DEMO = ["--config", "configs/demo.toml", "model.hidden=16", "model.layers=2", "train.steps=40", "signal.chunk=32",
        "train.log_every=10", "signal.path=builtin:camera@48"]


@pytest.mark.slow
def test_a_field_that_turns_nan_keeps_a_summary_and_its_last_good_state(tmp_path):
    run = tmp_path / "nan"
    args = [*DEMO, "optim.lr=1e30", "train.divergence_db=0", f"run.dir={run}"]
    proc = run_train(args)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # diverged: exit 3, as documented
    assert "Traceback" not in proc.stderr and "warning: training diverged" in proc.stdout
    summary = strict_load((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["steps"] == 0 and summary["missing"] == []
    assert summary["psnr_db"] > 5 and (run / "reconstruction.png").is_file()  # the initial field, rendered
    events = [m for m in strict_lines(run / "metrics.jsonl") if m.get("event")]
    assert events and events[0]["event"] == "diverged" and events[0]["not_finite"]["loss"] == "nan"
    again = run_train(args)  # the same command: finishes (nothing is missing), trains nothing
    assert again.returncode == 3 and "nothing is missing" in again.stdout, again.stderr[-2000:]
    assert [m for m in strict_lines(run / "metrics.jsonl") if m.get("event")] == events  # its record stays


@pytest.mark.slow
def test_an_exact_fit_finishes_with_strict_json(tmp_path):
    """A hash field that holds a short 16-bit recording renders it exactly: its SNR is infinite. The
    summary was refused by the JSON writer, so no summary, no WAV, and every rerun crashed the same way."""
    wav = tmp_path / "speech.wav"
    made = subprocess.run([sys.executable, "-m", "dist_int", "synth", "speech", str(wav), "--seconds", "0.3"],
                          cwd=ROOT, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    run = tmp_path / "exact"
    args = ["--config", "configs/hash.toml", f"signal.path={wav}", f"run.dir={run}", "signal.chunk=1024",
            "train.steps=600", "train.log_every=50", "train.eval_every=0"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = strict_load((run / "summary.json").read_text())
    assert summary["snr_db"] is None and summary["not_finite"]["snr_db"] == "inf"
    assert summary["psnr_db"] is None or summary["psnr_db"] > 120
    assert summary["status"] == "complete" and (run / "reconstruction.wav").is_file()
    assert "SNR (dB) inf" in proc.stdout
    strict_lines(run / "metrics.jsonl")
    import soundfile

    source, _ = soundfile.read(wav, dtype="int16")
    rendered, _ = soundfile.read(run / "reconstruction.wav", dtype="int16")
    assert (source == rendered).all()
    again = run_train(args)
    assert again.returncode == 0 and "nothing is missing" in again.stdout, again.stderr[-2000:]


def test_an_infinite_psnr_is_null_with_the_reason(tmp_path):
    """The summary of a reconstruction with zero error (the render's sum of squared errors is 0)."""
    from dist_int.comm import Comm
    from dist_int.engine.finish import _write
    from dist_int.engine.trainer import final_line
    from dist_int.rundir import RunDir

    run = RunDir(tmp_path)
    summary = {"psnr_db": math.inf, "best_psnr_db": math.inf, "best_step": 10, "psnr_is": "final", "status":
               "complete", "train_time_s": 1.0, "reconstruction": "x.wav", "snr_db": math.inf}
    written = _write(Comm(), run, summary, [], [])
    on_disk = strict_load(run.summary.read_text())
    assert on_disk == written and on_disk["psnr_db"] is None and on_disk["not_finite"]["psnr_db"] == "inf"
    assert on_disk["psnr_is"].startswith("infinite (written as null): the reconstruction equals the signal")
    assert on_disk["warnings"] == []  # an infinite final PSNR is not "below the best"
    assert final_line(on_disk).startswith("PSNR inf  SNR (dB) inf")
    # Both beyond the data's precision (107 dB for 16-bit data): 160 dB is not "below the best" of +inf.
    near = _write(Comm(), run, {**summary, "psnr_db": 160.0, "precision_psnr_db": 107.1}, [], [])
    assert near["warnings"] == []
    below = _write(Comm(), run, {**summary, "psnr_db": 90.0, "precision_psnr_db": 107.1}, [], [])
    assert below["warnings"] and "below the best evaluated" in below["warnings"][0]
