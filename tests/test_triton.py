"""The hash encoding's Triton kernels (model/hash_triton.py) against the torch ops they replace, run by
Triton's interpreter on CPU tensors (TRITON_INTERPRET=1): forward features and table gradients on every
layout the field has, a build of every kind of variant for a GPU target, and whole trainings that end at
the torch path's PSNR."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import read_summary, run_train

pytest.importorskip("triton")

from dist_int.model.hash import HashEncoding  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    """model/hash_triton.py, and the device its kernels are tested on: a GPU where there is one (compiled),
    else the CPU under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before any import)."""
    from dist_int.model import hash_triton

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert hash_triton.available(device) == "", hash_triton.available(device)
    return hash_triton, device


def _compare(module, enc: HashEncoding, coords: torch.Tensor) -> None:
    """The kernels' features and table gradient equal the ops' (the interpreter sums in the ops' order, so
    the bits agree; a GPU's fused multiply-adds and atomics would differ by rounding only)."""
    with torch.no_grad():
        enc.table.uniform_(-1, 1)  # large entries, so that a wrong row or weight shows
    grad = torch.randn(coords.shape[0], enc.out_features, generator=torch.Generator().manual_seed(1)).to(coords.device)
    ref = enc.interpolate(enc.table, *enc.corners(coords), coords.shape[0])
    ours = module.encode(enc, coords)
    (ref_grad,) = torch.autograd.grad(ref, enc.table, grad)
    (ours_grad,) = torch.autograd.grad(ours, enc.table, grad)
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours_grad, ref_grad, rtol=1e-5, atol=1e-5)


# (axes, sample counts, log2_table, features, coordinate dtype): dense-only, mixed and hashed-only levels;
# 1 to 4 axes; features that are and are not a power of two; float64 coordinates for long axes.
LAYOUTS = {
    "1-D audio, dense and hashed": (1, (50_000,), 10, 2, torch.float32),
    "2-D image, dense and hashed": (2, (300, 400), 12, 2, torch.float32),
    "2-D image, all dense": (2, (40, 30), 16, 2, torch.float32),
    "2-D, hashed only": (2, (3000, 3000), 4, 2, torch.float32),
    "2-D, 3 features": (2, (300, 400), 12, 3, torch.float32),
    "2-D, 1 feature, float64": (2, (300, 400), 12, 1, torch.float64),
    "3-D volume": (3, (40, 50, 60), 12, 2, torch.float32),
    "3-D point table": (3, None, 12, 2, torch.float32),
    "4-D": (4, (8, 9, 10, 11), 10, 4, torch.float32),
    "1-D of 2^31 samples: int64 rows, float64": (1, ((1 << 31) + 100,), 12, 2, torch.float64),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_the_kernels_compute_the_torch_ops_features_and_gradients(kernels, name):
    dims, axes, log2_table, features, dtype = LAYOUTS[name]
    torch.manual_seed(0)
    finest = max(axes) - 1 if axes else 512
    enc = HashEncoding(dims, levels=6, features=features, log2_table=log2_table, base_resolution=4,
                       finest_resolution=finest, axis_lengths=axes, encoding="triton")
    if "int64" in name:
        assert enc.index_dtype == torch.int64
    if "all dense" in name:
        assert enc.num_dense == enc.levels
    if "hashed only" in name:
        assert enc.num_dense == 0
    # Not a multiple of the block; the domain's corners and edges included (the last cell's clamp).
    coords = torch.rand(5000, dims, dtype=dtype) * 2 - 1
    coords[:2] = torch.tensor([1.0, -1.0], dtype=dtype)[:, None]
    module, device = kernels
    enc, coords = enc.to(device), coords.to(device)
    _compare(module, enc, coords)
    assert enc(coords).shape == (5000, enc.out_features)  # the module's own forward takes the kernels
    assert module.encode(enc, coords[:0]).shape == (0, enc.out_features)


def test_the_int64_table_offsets_compute_the_same(kernels, monkeypatch):
    """A table of F x rows >= 2^31 entries addresses features in int64 (WIDE); forced on for a small table,
    that path gives the same features and gradients."""
    module, device = kernels
    monkeypatch.setattr(module, "WIDE_FROM", 0)
    enc = HashEncoding(3, levels=5, features=3, log2_table=10, finest_resolution=60, axis_lengths=(61, 50, 40),
                       encoding="triton").to(device)
    _compare(module, enc, (torch.rand(3000, 3) * 2 - 1).to(device))


# A GPU build of every kind of kernel variant, made here without a GPU: Triton compiles for a CUDA target
# down to the device binary (its wheel brings the assembler). The interpreter runs Python semantics; this
# catches what the compiler refuses (types, constexpr branches, tuple returns) before a GPU sees it.
COMPILE = """
import sys, triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget
from dist_int.model import hash_triton as ht
assert not ht.INTERPRET
for kernel in (ht._forward, ht._backward):
    names = list(kernel.arg_names)
    for d, f, f64, idx64, wide in [(1, 2, 0, 0, 0), (2, 2, 0, 0, 0), (3, 2, 0, 0, 0), (4, 2, 0, 0, 0),
                                   (1, 2, 1, 1, 1), (2, 3, 1, 0, 0), (3, 1, 0, 0, 1), (4, 8, 0, 1, 0)]:
        fp, ix = ("fp64" if f64 else "fp32"), ("i64" if idx64 else "i32")
        sig = dict(zip(names[:10], [f"*{fp}", "*fp32", "*fp32", "*fp64", f"*{ix}", f"*{ix}", f"*{ix}", "i32", "i32",
                                    "i32"]))
        const = dict(D=d, L=16, F=f, FP=triton.next_power_of_2(f), F64=bool(f64), IDX64=bool(idx64), WIDE=bool(wide),
                     BLOCK=ht.BLOCK_GPU)
        sig.update({k: "constexpr" for k in const})
        built = triton.compile(ASTSource(kernel, sig, constexprs={(names.index(k),): v for k, v in const.items()}),
                               target=GPUTarget("cuda", 90, 32))
        assert built.asm.get("cubin"), (kernel, d, f)
print("built")
"""


def test_the_kernels_build_for_a_gpu(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "built" in proc.stdout, proc.stderr[-3000:]


def test_auto_checks_the_kernels_before_it_trusts_them(kernels, monkeypatch):
    """`auto` runs a check of the kernels against the ops on each device before it uses them; a kernel
    that computes something else is caught and named."""
    module, device = kernels
    enc = HashEncoding(2, levels=4, log2_table=10, finest_resolution=200, axis_lengths=(201, 201)).to(device)
    assert module.check(enc, device) == ""

    def wrong(kernel, enc, coords, first, second):
        second.zero_()

    monkeypatch.setattr(module, "_launch", wrong)
    assert module.check(enc, device).startswith("features differ")
    cpu = enc.cpu()  # on a CPU auto never takes the kernels: the ops, and no check made
    cpu(torch.zeros(3, 2))
    assert cpu._triton_checked == {}


def test_triton_on_a_cpu_without_the_interpreter_is_refused_before_anything_is_written(tmp_path):
    proc = run_train(["--config", "configs/demo.toml", "signal.path=builtin:camera@32", f"run.dir={tmp_path / 'r'}",
                      "model.kind=hash", "model.encoding=triton"], TRITON_INTERPRET="0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert 'model.encoding = "triton": the Triton kernels need a CUDA device' in proc.stderr
    assert "TRITON_INTERPRET=1" in proc.stderr and not (tmp_path / "r").exists()


HASH = ["model.kind=hash", "model.levels=8", "model.log2_table=12", "model.hidden=32", "optim.lr=1e-2",
        "train.log_every=10", "train.eval_every=0", "checkpoint.every=0", "train.steps=20"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    from dist_int.synth import synth_speech, synth_volume

    d = tmp_path_factory.mktemp("triton-media")
    return {"image": ("builtin:camera@64", ["signal.chunk=16"]),
            "volume": (synth_volume(d / "vol.tif", size=16), ["signal.chunk=8"]),
            "audio": (synth_speech(d / "speech.wav", seconds=0.5, rate=8000), ["signal.chunk=512"])}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["image", "volume", "audio"])
def test_a_run_with_the_kernels_ends_at_the_torch_paths_psnr(media, tmp_path, kind):
    """model.encoding = triton under TRITON_INTERPRET=1 trains to the torch ops' PSNR within 0.01 dB; the
    log names the path each took."""
    path, extra = media[kind]
    runs = {}
    for encoding in ("torch", "triton"):
        proc = run_train(["--config", "configs/demo.toml", f"signal.path={path}", f"run.dir={tmp_path / encoding}",
                          *HASH, *extra, f"model.encoding={encoding}"], TRITON_INTERPRET="1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[encoding] = (read_summary(tmp_path / encoding), proc.stdout + proc.stderr)
    (torch_run, torch_log), (triton_run, triton_log) = runs["torch"], runs["triton"]
    assert "encoding: Triton kernels, interpreted (TRITON_INTERPRET=1)" in triton_log
    assert "encoding: torch ops" in torch_log
    assert torch_run["psnr_db"] > 10 and abs(triton_run["psnr_db"] - torch_run["psnr_db"]) <= 0.01, \
        (torch_run["psnr_db"], triton_run["psnr_db"])
