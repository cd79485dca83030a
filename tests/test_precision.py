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
    for n in (50, 70, 90):  # teaching sets of changing size
        loss = engine(torch.rand(n, 2) * 2 - 1).square().mean()
        engine.backward(loss)
        engine.step()
    torch.save({"compiled": engine.is_compiled,
                "frames": sum(torch._dynamo.utils.counters["frames"].values())}, out)


def test_compile_really_compiles_through_deepspeed(tmp_path):
    out = tmp_path / "compiled.pt"
    run_distributed(_compiled, 1, (out,))
    got = torch.load(out)
    assert got["compiled"] and got["frames"] >= 1
