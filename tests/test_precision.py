"""train.precision does what it says inside DeepSpeed's engine, and the teacher scores at that precision."""

import pytest
import torch

from conftest import run_distributed


def _activation_dtypes(rank, world, precision, out):
    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.engine.precision import Precision
    from dist_int.model import Siren

    cfg = Config()
    cfg.train.steps = 10
    prec = Precision(precision, torch.device("cpu"))
    torch.manual_seed(0)
    model = Siren(2, 3, 32, 4)
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, []).append(output.dtype)
        return hook

    model.net[0].register_forward_hook(record("first"))
    model.net[1].register_forward_hook(record("hidden"))
    model.out.register_forward_hook(record("out"))
    engine, _ = build_engine(model, cfg, prec)
    x = torch.rand(64, 2) * 2 - 1
    loss = engine(x).float().square().mean()       # the training forward, inside engine(...)
    engine.backward(loss)
    grad_dtypes = {p.grad.dtype for p in engine.module.parameters()}
    engine.step()
    train = {k: v[-1] for k, v in seen.items()}
    seen.clear()
    with torch.no_grad(), prec.scoring():           # the teacher's forward
        engine.module(x)
    score = {k: v[-1] for k, v in seen.items()}
    torch.save({"train": train, "score": score, "grads": grad_dtypes,
                "weights": {p.dtype for p in engine.module.parameters()}}, out)


@pytest.mark.parametrize("precision, hidden", [("bf16", torch.bfloat16), ("fp32", torch.float32),
                                               ("tf32", torch.float32)])
def test_training_and_scoring_run_at_the_configured_precision(tmp_path, precision, hidden):
    out = tmp_path / "dtypes.pt"
    run_distributed(_activation_dtypes, 1, (precision, out))
    got = torch.load(out)
    # bf16: hidden layers and the output layer compute in bf16; the first layer stays fp32, since bf16
    # coordinates would merge neighbouring pixels.
    assert got["train"] == {"first": torch.float32, "hidden": hidden, "out": hidden}
    assert got["score"] == got["train"]  # the teacher scores at the training precision, never lower
    assert got["weights"] == {torch.float32} and got["grads"] == {torch.float32}  # fp32 master weights


def test_tf32_switches_are_set_for_gpus_and_left_alone_on_cpus():
    from dist_int.engine.precision import Precision

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        Precision("tf32", torch.device("cuda")).apply()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        Precision("fp32", torch.device("cuda")).apply()
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        Precision("bf16", torch.device("cuda")).apply()
        assert torch.backends.cuda.matmul.allow_tf32  # bf16's fp32 parts (first layer, eval) use TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        Precision("tf32", torch.device("cpu")).apply()
        assert not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _compiled(rank, world, out):
    import torch._dynamo

    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.model import Siren

    cfg = Config()
    cfg.train.steps = 10
    cfg.train.compile = True
    torch._dynamo.utils.counters.clear()
    engine, _ = build_engine(Siren(2, 3, 16, 3), cfg)
    from dist_int.engine.step import TrainStep
    from dist_int.model.infer import padded

    step = TrainStep(engine, 1, 3, torch.device("cpu"), max_points_per_pass=2)
    for n in (50, 70, 90):  # teaching sets of changing size
        step(torch.rand(n, 2) * 2 - 1, torch.rand(n, 3), n)
    with torch.no_grad():
        padded(engine, torch.rand(40, 2))
    warm = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # Pieces of 0 and 1 rows (a rank with fewer rows than the largest share: 3 rows in 5 pieces) and
    # scoring/evaluation pieces of 0, 1 and n rows: no new graph (model/infer.py, padded).
    step(torch.rand(3, 2) * 2 - 1, torch.rand(3, 3), 20, max_rows=10)
    with torch.no_grad():
        for n in (0, 1, 2, 33):
            assert padded(engine, torch.rand(n, 2)).shape == (n, 3)
    torch.save({"compiled": engine.is_compiled, "warm": warm,
                "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"],
                "frames": sum(torch._dynamo.utils.counters["frames"].values())}, out)


@pytest.mark.slow
def test_compile_really_compiles_through_deepspeed_without_graphs_for_tiny_pieces(tmp_path):
    out = tmp_path / "compiled.pt"
    run_distributed(_compiled, 1, (out,))
    got = torch.load(out)
    assert got["compiled"] and got["frames"] >= 1
    assert got["graphs"] == got["warm"], got  # no graph for empty or single-row pieces


def test_a_deepspeed_that_ignores_our_config_sections_is_refused():
    """An older DeepSpeed accepts unknown sections silently (bf16 off, an all-reduce per piece): the engine
    is checked at start-up and the error names the version needed."""
    from types import SimpleNamespace

    from dist_int.engine.deepspeed_engine import MIN_DEEPSPEED, check_engine
    from dist_int.engine.precision import Precision
    from dist_int.errors import InstallError

    good = SimpleNamespace(managed_gradient_accumulation=lambda: False, torch_autocast_enabled=lambda: True,
                           torch_autocast_dtype=lambda: torch.bfloat16, gradient_clipping=lambda: 0.0)
    check_engine(good, Precision("bf16", torch.device("cpu")))
    old = SimpleNamespace(torch_autocast_enabled=lambda: False, gradient_clipping=lambda: 1.0)
    with pytest.raises(InstallError, match=f"deepspeed>={MIN_DEEPSPEED}") as e:
        check_engine(old, Precision("bf16", torch.device("cpu")))
    assert "managed_gradient_accumulation is None" in str(e.value) and "torch_autocast_enabled is False" in str(e.value)


def _adam_steps(rank, world, precision, out):
    """Three updates of a small hash field through the engine, and the same three with torch's default
    (unfused, single-tensor) Adam on a copy, from the same gradients."""
    import copy

    from dist_int.config import Config
    from dist_int.comm import Comm
    from dist_int.engine.checkpoint import Checkpointer
    from dist_int.engine.deepspeed_engine import CosineLR, build_engine, optimizer_groups
    from dist_int.rundir import RunDir
    from dist_int.engine.precision import Precision
    from dist_int.model import HashField

    cfg = Config()
    cfg.train.steps, cfg.optim.lr = 10, 1e-2
    torch.manual_seed(0)
    model = HashField(2, 3, hidden=16, layers=2, levels=4, log2_table=8, finest_resolution=64)
    ref = copy.deepcopy(model)
    engine, _ = build_engine(model, cfg, Precision(precision, torch.device("cpu")))
    # torch's Adam itself at every precision (bf16 is autocast inside the engine, fp32 weights: precision.py)
    assert type(engine.optimizer) is torch.optim.Adam
    fused = [bool(g.get("fused")) for g in engine.optimizer.param_groups]
    # The reference: the same groups (the table's Adam settings, model/hash.py) with torch's default.
    opt = torch.optim.Adam(optimizer_groups(ref), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps,
                           foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineLR(10, cfg.optim.lr, cfg.optim.lr_min))

    def update(engine, x, y):  # one step through the engine and one of the reference, on the same batch
        engine.backward((engine(x).float() - y).square().mean())
        engine.step()
        opt.zero_grad()
        (ref(x).float() - y).square().mean().backward()
        opt.step()
        sched.step()

    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.rand(256, 2, generator=g) * 2 - 1, torch.rand(256, 3, generator=g)
        update(engine, x, y)
    # A checkpoint written by the default form (a run folder from before the fused Adam): its groups say
    # fused=None, which torch's load_state_dict brings back; the load keeps the fused form.
    got = [p.detach().clone() for p in engine.module.parameters()]
    for group in engine.optimizer.param_groups:
        group["fused"] = None
    for state in engine.optimizer.state.values():  # step counters as a float64 default form may hold them
        state["step"] = state["step"].double()
    run = RunDir(out.parent / "run")
    run.checkpoints.mkdir(parents=True)
    Checkpointer(engine, run, Comm(), 0, 2, {}, {}).save(3, "running")
    engine2, _ = build_engine(copy.deepcopy(model), cfg, Precision(precision, torch.device("cpu")))
    engine2.load_checkpoint(str(run.checkpoints), tag=run.checkpoint(3).name)
    loaded = [g.get("fused") for g in engine2.optimizer.param_groups]   # what torch's load brings back
    Checkpointer(engine2, run, Comm(), 0, 2, {}, {}).load(run.checkpoint(3).name)
    restored = [g.get("fused") for g in engine2.optimizer.param_groups]
    steps = {(s["step"].dtype, s["step"].device.type) for s in engine2.optimizer.state.values()}
    ref_before = [p.detach().clone() for p in ref.parameters()]
    update(engine2, x, y)  # one more step: fused on the loaded state, and the reference's
    torch.save({"fused": fused, "got": got, "ref": ref_before, "loaded": loaded, "restored": restored,
                "steps": steps, "got_after_load": [p.detach().clone() for p in engine2.module.parameters()],
                "ref_after_load": [p.detach().clone() for p in ref.parameters()]}, out)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_engine_runs_torchs_fused_adam_with_the_default_adams_updates(tmp_path, precision):
    """One pass per parameter and no temporaries (docs/training.md, "Fused Adam"): every group fused, and
    in fp32 the parameters after three steps equal torch's default Adam's (hash table and MLP alike); a
    checkpoint saved by the default form loads back into the fused one (checkpoint.py: restore_fused)."""
    out = tmp_path / "adam.pt"
    run_distributed(_adam_steps, 1, (precision, out))
    got = torch.load(out)
    assert got["fused"] and all(got["fused"])
    assert got["loaded"] == [None] * len(got["fused"]) and got["restored"] == [True] * len(got["fused"])
    assert got["steps"] == {(torch.float32, "cpu")}  # the fused step's counters: float32, on the device
    if precision == "fp32":
        for a, b in zip(got["got_after_load"], got["ref_after_load"]):  # the step after the load, too
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        for a, b in zip(got["got"], got["ref"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
