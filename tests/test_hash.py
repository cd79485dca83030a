"""The hash-grid field (model/hash.py): the encoding against a plain per-corner reference, its gradient,
its levels and table layout, its settings refused before anything runs, and 1 rank = 2 ranks for every
kind of signal end to end (docs/fields.md)."""

import itertools
import math
import os
import numpy as np
import pytest
import torch

from conftest import read_metrics, read_summary, run_train
from dist_int.model import HashEncoding, HashField, build_field, field_spec
from dist_int.model import native
from dist_int.model.hash import PRIMES, TABLE_ADAM, level_resolutions


def reference(enc: HashEncoding, coords: torch.Tensor) -> np.ndarray:
    """The paper's encoding written out point by point, level by level and corner by corner (float64)."""
    table = enc.table.detach().double().numpy().T                       # (rows, F)
    offsets = enc.offset.view(-1).tolist()
    out = np.zeros((len(coords), enc.levels * enc.features))
    for level, (grid, dense) in enumerate(zip(enc.grids, enc.dense)):
        size = math.prod(c + 1 for c in grid) if dense else 1 << int(math.log2(int(enc.mask.view(-1)[level]) + 1))
        for p, x in enumerate(coords.double().numpy()):
            pos = [(x[d] + 1) / 2 * grid[d] for d in range(enc.in_dims)]
            cell = [min(max(int(math.floor(pos[d])), 0), grid[d] - 1) for d in range(enc.in_dims)]
            acc = np.zeros(enc.features)
            for bits in itertools.product((0, 1), repeat=enc.in_dims):
                vertex = [c + b for c, b in zip(cell, bits)]
                if dense:
                    row = sum(v * math.prod(g + 1 for g in grid[:d]) for d, v in enumerate(vertex))
                else:
                    row = 0
                    for d, v in enumerate(vertex):
                        row ^= v * PRIMES[d]
                    row %= size
                assert 0 <= row < size
                weight = math.prod((pos[d] - cell[d]) if b else 1 - (pos[d] - cell[d]) for d, b in enumerate(bits))
                acc += weight * table[offsets[level] + row]
            out[p, level * enc.features:(level + 1) * enc.features] = acc
    return out


@pytest.mark.parametrize("dims,axes", [(1, (3000,)), (2, (300, 200)), (3, (40, 70, 90)), (3, None), (4, (9, 9, 9, 9))])
def test_encoding_equals_the_per_corner_reference(dims, axes):
    torch.manual_seed(0)
    enc = HashEncoding(dims, levels=6, features=3, log2_table=10, base_resolution=4, finest_resolution=2000,
                       axis_lengths=axes)
    with torch.no_grad():
        enc.table.normal_()
    assert any(enc.dense) and not all(enc.dense)  # both kinds of level are exercised
    coords = torch.rand(40, dims) * 2 - 1
    coords[0], coords[1] = 1.0, -1.0  # the domain's edges stay inside the last and first cells
    np.testing.assert_allclose(enc(coords).detach().double().numpy(), reference(enc, coords), atol=1e-3)  # fp32 positions


@pytest.mark.parametrize("dims,axes,features,dtype", [
    (1, (3000,), 2, torch.float32), (2, (300, 200), 2, torch.float32), (2, (300, 200), 3, torch.float32),
    (3, (40, 70, 90), 1, torch.float32), (3, None, 8, torch.float32), (4, (9, 9, 9, 9), 2, torch.float32),
    (1, (172_800_000,), 2, torch.float64), (3, (40_000_000, 720, 1280), 2, torch.float64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_native_kernel_computes_the_torch_ops_bits(dims, axes, features, dtype, threads):
    """The no-grad forward on a CPU takes model/native.py's C kernel; it must give the torch ops' results
    bit for bit (else a teaching set would depend on which path scored it): points inside, on the edges
    and outside the domain, dense and hashed levels, fp32 coordinates and float64 ones (an hour of audio's
    axis), split over threads."""
    torch.manual_seed(0)
    enc = HashEncoding(dims, levels=6, features=features, log2_table=10, base_resolution=4,
                       finest_resolution=max(axes or (2000,)), axis_lengths=axes)
    with torch.no_grad():
        enc.table.normal_()
    assert any(enc.dense) and not all(enc.dense) and enc.index_dtype == torch.int32
    coords = torch.rand(9000, dims, dtype=dtype) * 2 - 1
    coords[:3] = torch.tensor([1.0, -1.0, 0.0]).view(3, 1)
    coords[3:6] = torch.tensor([1.5, -1.5, 1 - 1e-7]).view(3, 1)
    assert native.library() is not None, native.status()  # .ci/run installs a C compiler
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            assert enc.uses_native(coords)
            fast = enc(coords)
    finally:
        torch.set_num_threads(before)
    assert not enc.uses_native(coords)  # with the gradient on: the torch ops
    ops = enc(coords).detach()
    assert fast.shape == ops.shape and torch.equal(fast, ops)


def test_without_a_compiler_the_torch_ops_run_and_the_log_says_why(monkeypatch, tmp_path):
    coords = torch.rand(100, 2) * 2 - 1
    enc = HashEncoding(2, levels=4, log2_table=8, axis_lengths=(50, 50))
    expected = enc(coords).detach()
    try:
        for env, why in [({"DIST_INT_NATIVE": "0"}, "DIST_INT_NATIVE=0"),
                         ({"CC": str(tmp_path / "no-cc")}, "no C compiler"),
                         ({"CC": "false", "DIST_INT_CACHE": str(tmp_path / "cache")}, "could not build")]:
            with monkeypatch.context() as m:
                for k, v in env.items():
                    m.setenv(k, v)
                native.reset()
                with torch.no_grad():
                    assert torch.equal(enc(coords), expected)
                assert native.library() is None and why in native.status(), native.status()
                assert not list((tmp_path / "cache").glob("*"))  # a failed build leaves nothing behind
    finally:
        native.reset()


def test_inputs_the_kernel_does_not_take_go_to_the_torch_ops():
    """Whatever the kernel would misread goes to the torch ops, which compute it or raise their error:
    buffers cast to fp32 by module.float(), coordinates that broadcast or have no axis dimension, a table
    on another device, fp32 coordinates on a level with 2^24 cells or more (not exact in fp32)."""
    torch.manual_seed(0)
    enc = HashEncoding(3, levels=4, log2_table=8, axis_lengths=(20, 30, 40)).float()  # cells now fp32
    coords = torch.rand(50, 3) * 2 - 1
    ops = enc(coords).detach()  # with the gradient on: the torch ops
    with torch.no_grad():
        assert enc.uses_native(coords) and torch.equal(enc(coords), ops)
        assert not enc.uses_native(coords[:, :1])                     # (n, 1) broadcast by the torch ops
        assert torch.equal(enc(coords[:, :1]), enc(coords[:, :1].expand(-1, 3).contiguous()))
        flat = HashEncoding(1, levels=2, log2_table=8, axis_lengths=(100,))
        assert not flat.uses_native(torch.zeros(10))
        with pytest.raises((RuntimeError, IndexError)):
            flat(torch.zeros(10))
        fine = HashEncoding(1, levels=1, log2_table=25, base_resolution=(1 << 24) + 3,
                            finest_resolution=(1 << 24) + 3)
        assert not fine.uses_native(torch.ones(1, 1)) and fine.uses_native(torch.ones(1, 1, dtype=torch.float64))
        meta = HashEncoding(2, levels=2, log2_table=8, axis_lengths=(10, 10)).to("meta")
        assert not meta.uses_native(torch.zeros(4, 2))
        assert enc(torch.zeros(0, 3)).shape == (0, enc.out_features)  # no rows: both paths
    assert enc(torch.zeros(0, 3)).shape == (0, enc.out_features)


@pytest.mark.slow
def test_a_damaged_cached_kernel_is_rebuilt_and_an_unusable_cache_falls_back(monkeypatch, tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / native.library_name()).write_bytes(b"not a library")
    # A fresh process: this one has the kernel loaded already, and the loader would hand that back.
    check = ("from dist_int.model import native; import os; lib = native.library(); "
             "print(lib is not None, os.path.getsize(os.path.join(os.environ['DIST_INT_CACHE'], "
             "native.library_name())))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DIST_INT_CACHE": str(cache)})
    loaded, size = out.stdout.split()
    assert loaded == "True" and int(size) > 1000, out.stdout + out.stderr  # built again in its place
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DIST_INT_CACHE", str(tmp_path / "file" / "sub"))  # a cache that cannot be made
    try:
        native.reset()
        assert native.library() is not None, native.status()  # built in a private temporary folder
    finally:
        native.reset()


@pytest.mark.slow
def test_a_run_scores_alike_with_the_kernel_and_with_the_torch_ops(signals, tmp_path):
    """One run with each path: every logged loss and the final PSNR are the same numbers, so the teaching
    sets were the same (soft teacher, a selection at every step of the first phase)."""
    args = [f"signal.path={signals['image']}", *HASH, *KIND_ARGS["image"], "train.steps=30", "train.log_every=5"]
    ran = {}
    for name, env in [("native", {}), ("ops", {"DIST_INT_NATIVE": "0"})]:
        ran[name] = run_train([f"run.dir={tmp_path / name}", *args], **env)
        assert ran[name].returncode == 0, ran[name].stderr[-3000:]
    assert "no-grad passes: native kernel" in ran["native"].stdout + ran["native"].stderr
    assert "no-grad passes: torch ops (DIST_INT_NATIVE=0)" in ran["ops"].stdout + ran["ops"].stderr
    loss = {name: [m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m] for name in ran}
    assert len(loss["native"]) == 6 and loss["native"] == loss["ops"]
    assert read_summary(tmp_path / "native")["psnr_db"] == read_summary(tmp_path / "ops")["psnr_db"]


def test_levels_grow_geometrically_are_capped_by_the_samples_and_fill_the_table():
    res = level_resolutions(16, 16, 2048)
    assert res[0] == 16 and res[-1] == 2048 and all(b >= a for a, b in zip(res, res[1:]))
    growth = (2048 / 16) ** (1 / 15)
    assert res[5] == math.floor(16 * growth ** 5)  # N_l = floor(N_min b^l), the paper's eq. 2-3
    enc = HashEncoding(2, levels=16, log2_table=12, base_resolution=16, finest_resolution=2048,
                       axis_lengths=(100, 3000))
    assert all(g[0] <= 99 for g in enc.grids) and enc.grids[-1][1] == 2048   # 100 samples: at most 99 cells
    rows = [math.prod(c + 1 for c in g) for g in enc.grids]
    assert enc.dense == [r <= 4096 for r in rows]
    assert enc.table.shape == (2, sum(r if d else 4096 for r, d in zip(rows, enc.dense)))
    ranges = sorted((o, o + (r if d else 4096)) for o, r, d in zip(enc.offset.view(-1).tolist(), rows, enc.dense))
    assert ranges[0][0] == 0 and ranges[-1][1] == enc.table.shape[1]
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # levels never share rows


def test_gradient_equals_autograd_through_a_plain_gather():
    torch.manual_seed(0)
    enc = HashEncoding(3, levels=5, features=2, log2_table=9, base_resolution=3, finest_resolution=64)
    x = torch.rand(500, 3) * 2 - 1
    g = torch.randn(500, enc.out_features)
    (enc(x) * g).sum().backward()
    idx, w = enc.corners(x)
    table = enc.table.detach().clone().requires_grad_()
    plain = (table[:, idx] * w).sum(1)                                   # (F, L * N), autograd's own gather
    plain = plain.view(enc.features, enc.levels, -1).permute(2, 1, 0).reshape(500, -1)
    (plain * g).sum().backward()
    torch.testing.assert_close(enc.table.grad, table.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,index_dtype", [(172_800_000, torch.int32), ((1 << 31) + 101, torch.int64)])
def test_long_axes_keep_neighbouring_samples_apart(n, index_dtype):
    """An hour of audio at 48 kHz: float64 coordinates reach distinct cells on the finest level. An axis of
    2^31 cells and more takes int64 rows (an int32 would hold no such cell)."""
    enc = HashEncoding(1, levels=4, log2_table=12, base_resolution=16, finest_resolution=n - 1, axis_lengths=(n,))
    assert enc.index_dtype == index_dtype
    pos = torch.tensor([n - 3, n - 2], dtype=torch.float64)
    coords = (2 * pos / (n - 1) - 1).unsqueeze(1)
    idx, _ = enc.corners(coords)
    finest = idx.view(2, enc.levels, 2)[0, -1]  # the low corner of both points on the finest level
    assert finest[0] != finest[1]


@pytest.mark.parametrize("dims,axes,log2_table", [(2, (32768, 32768), 19), (3, (1024, 1024, 1024), 19),
                                                  (4, (2000, 720, 1280, 3), 22), (1, (172_800_000,), 24)])
def test_int32_rows_equal_exact_integer_arithmetic(dims, axes, log2_table):
    """The gigapixel image's, the volume's, a video's and the hour of audio's encodings: rows computed in
    int32 (products of a coordinate and a prime wrap modulo 2^32) equal the paper's hash in exact integers,
    for every corner of every level (docs/fields.md, "Index arithmetic in int32")."""
    enc = HashEncoding(dims, levels=16, log2_table=log2_table, base_resolution=16, finest_resolution=max(axes) - 1,
                       axis_lengths=axes)
    assert enc.index_dtype == torch.int32 and any(not d for d in enc.dense)
    gen = torch.Generator().manual_seed(0)
    coords = torch.rand(1001, dims, generator=gen, dtype=torch.float64) * 2 - 1   # 1001: the kernels' scalar tails too
    coords[0], coords[1] = 1.0, -1.0
    coords = coords if dims == 1 else coords.float()
    idx, _ = enc.corners(coords)
    assert idx.dtype == torch.int32
    expect = np.zeros((1 << dims, enc.levels, len(coords)), dtype=np.int64)
    for level, (grid, dense) in enumerate(zip(enc.grids, enc.dense)):
        # the cell from the encoding's own float positions (their rounding is not what is tested here)
        cell = torch.stack([((coords[:, d] + 1) * 0.5 * grid[d]).floor().clamp(0, grid[d] - 1)
                            for d in range(dims)]).long().numpy()
        for c, bits in enumerate(itertools.product((0, 1), repeat=dims)):
            vertex = [int(b) + cell[d] for d, b in enumerate(reversed(bits))]   # axis 0 varies fastest
            if dense:
                row = sum(v * math.prod(g + 1 for g in grid[:d]) for d, v in enumerate(vertex))
            else:
                row = np.zeros(len(coords), dtype=np.uint64)
                for d, v in enumerate(vertex):
                    row ^= v.astype(np.uint64) * np.uint64(PRIMES[d])   # wraps modulo 2^64: low bits exact
                row = (row % np.uint64(1 << log2_table)).astype(np.int64)
            expect[c, level] = row + int(enc.offset[level])
    np.testing.assert_array_equal(idx.long().view(1 << dims, enc.levels, -1).numpy(), expect)


def test_init_optimizer_and_the_registry():
    from dist_int.config import ModelConfig

    torch.manual_seed(0)
    field = HashField(2, 3, hidden=16, layers=3, levels=4, log2_table=8)
    assert field.encoding.table.abs().max() <= 1e-4 and field.encoding.table.abs().max() > 0.9e-4
    groups = field.optimizer_groups()
    assert groups[0]["params"] == [field.encoding.table] and groups[0]["betas"] == TABLE_ADAM["betas"] == (0.9, 0.99)
    assert groups[0]["eps"] == 1e-15 and groups[0]["weight_decay"] == 0
    assert sum(p.numel() for g in groups for p in g["params"]) == field.num_params
    cfg = ModelConfig(kind="hash", levels=4, log2_table=8)
    model = build_field(cfg, 2, 3, (64, 64))
    spec = field_spec(cfg, 2, 3, (64, 64))
    assert spec.num_params == model.num_params and spec.num_bytes == 4 * model.num_params
    assert (spec.hidden, spec.layers) == (64, 3)  # the hash field's own defaults
    assert field_spec(ModelConfig(), 2, 3, (64, 64)).num_params == build_field(ModelConfig(), 2, 3, None).num_params


def _engine_groups(rank, world, out):
    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import build_engine

    cfg = Config()
    engine, _ = build_engine(HashField(2, 3, 8, 2, levels=2, log2_table=6), cfg)
    torch.save([{k: g[k] for k in ("betas", "eps", "weight_decay")} for g in engine.optimizer.param_groups], out)


def test_a_deepspeed_engine_keeps_the_table_adam_settings(tmp_path):
    from conftest import run_distributed
    from dist_int.config import OptimConfig

    run_distributed(_engine_groups, 1, (tmp_path / "groups.pt",))
    tables, mlp = torch.load(tmp_path / "groups.pt")
    assert tables == {"betas": (0.9, 0.99), "eps": 1e-15, "weight_decay": 0.0}
    assert mlp["betas"] == (OptimConfig.beta1, OptimConfig.beta2) and mlp["eps"] == OptimConfig.eps


BAD = {
    "finest below base": (["model.kind=hash", "model.base_resolution=64", "model.finest_resolution=32"],
                          "model.finest_resolution (32) must not be below model.base_resolution (64)"),
    "zero levels": (["model.kind=hash", "model.levels=0"], "model.levels must be >= 1"),
    "both growth and finest": (["model.kind=hash", "model.growth=1.5", "model.finest_resolution=512"],
                               "set model.growth or model.finest_resolution, not both"),
    "unknown field": (["model.kind=fourier"], "model.kind must be one of"),
    # A point table has no sample spacing to cap the levels at: 16 levels of 2^26 rows.
    "table beyond the budget": (["model.kind=hash", "model.log2_table=26", "train.memory_mb=4096", "signal.path=MESH",
                                 "signal.points=1000"], "model.log2_table=26: the field needs about"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_settings_fail_before_anything_runs(tmp_path, name):
    from dist_int.synth import synth_shape

    args, message = BAD[name]
    args = [a.replace("MESH", str(synth_shape(tmp_path / "washer.ply"))) if "MESH" in a else a for a in args]
    run = tmp_path / "run"
    proc = run_train([f"run.dir={run}", "signal.path=builtin:camera@64", "train.steps=5", *args])
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr
    assert not run.exists()


def test_a_kind_the_field_cannot_take_is_named():
    from dist_int.config import ModelConfig
    from dist_int.errors import ConfigError

    with pytest.raises(ConfigError, match='model.kind = "hash" takes signals of 1 to 4 coordinate axes'):
        field_spec(ModelConfig(kind="hash"), 5, 1, (8,) * 5)


@pytest.fixture(scope="module")
def signals(tmp_path_factory):
    from dist_int.synth import synth_shape, synth_speech, synth_video, synth_volume

    d = tmp_path_factory.mktemp("hash-media")
    return {"image": "builtin:camera@64", "audio": synth_speech(d / "speech.wav", seconds=0.5, rate=8000),
            "volume": synth_volume(d / "vol.tif", size=20), "video": synth_video(d / "clip.mp4", frames=8, size=32),
            "shape": synth_shape(d / "washer.ply")}


HASH = ["model.kind=hash", "model.levels=8", "model.log2_table=12", "model.hidden=32", "optim.lr=1e-2",
        "optim.beta2=0.99", "optim.eps=1e-15", "train.log_every=20", "train.eval_every=0", "checkpoint.every=0",
        "train.steps=60"]
KIND_ARGS = {"image": ["signal.chunk=16"], "audio": ["signal.chunk=512"], "volume": ["signal.chunk=10"],
             "video": ["signal.chunk=[4,16,16]"], "shape": ["signal.points=4000", "signal.chunk=500"]}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KIND_ARGS))
def test_one_rank_equals_two_ranks_with_the_hash_field(signals, tmp_path, kind):
    args = [f"signal.path={signals[kind]}", *HASH, *KIND_ARGS[kind]]
    one = run_train([f"run.dir={tmp_path / 'one'}", *args], nproc=0)
    two = run_train([f"run.dir={tmp_path / 'two'}", *args], nproc=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-3000:] + two.stderr[-3000:]
    s1, s2 = read_summary(tmp_path / "one"), read_summary(tmp_path / "two")
    assert s1["field"] == s2["field"] == "hash" and s1["kind"] == kind
    assert abs(s1["psnr_db"] - s2["psnr_db"]) <= 0.05 and s1["psnr_db"] > 20, (s1["psnr_db"], s2["psnr_db"])
    assert s1["field_bytes"] == s2["field_bytes"] == 4 * s1["num_params"]
    assert s1["bits_per_sample"] == pytest.approx(8 * s1["field_bytes"] / np.prod(s1["shape"][:-1]), rel=1e-3)
    assert "iou" not in s1 or abs(s1["iou"] - s2["iou"]) <= 0.001


def _fresh_status(env: dict) -> str:
    """native.status() in a fresh process (this one may have the kernel loaded already)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "from dist_int.model import native; print(native.status())"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.parametrize("value, on", [("false", False), ("no", False), ("OFF", False), ("0", False),
                                       ("yes", True), ("true", True), ("1", True), ("maybe", False)])
def test_dist_int_native_takes_the_usual_spellings(monkeypatch, value, on):
    monkeypatch.setenv("DIST_INT_NATIVE", value)
    try:
        native.reset()
        assert (native.library() is not None) == on, native.status()
        if value == "maybe":
            assert "understood as off" in native.status()
    finally:
        native.reset()


@pytest.mark.slow
def test_a_cached_library_without_the_kernel_is_rebuilt(tmp_path):
    import subprocess

    cache = tmp_path / "cache"
    cache.mkdir()
    src = tmp_path / "other.c"
    src.write_text("int something_else(void) { return 1; }\n")
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(cache / native.library_name()), str(src)], check=True)
    assert _fresh_status({"DIST_INT_CACHE": str(cache)}) == "native kernel"
    assert not list(cache.glob("*.unusable"))  # the cache works: it was the file that was foreign
    import ctypes

    assert hasattr(ctypes.CDLL(str(cache / native.library_name())), "hash_encode")  # rebuilt in its place
    assert _fresh_status({"DIST_INT_CACHE": str(cache)}) == "native kernel"


@pytest.mark.slow
def test_a_cache_on_a_noexec_mount_is_not_rebuilt_at_every_start(tmp_path):
    """A library built on a noexec mount never loads: the first start builds it there once, remembers
    that, and builds in a private temporary folder; later starts build nothing."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a noexec tmpfs needs root")
    cache = tmp_path / "noexec"
    cache.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,noexec", "tmpfs", str(cache)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        builds = tmp_path / "builds"
        cc = tmp_path / "cc"  # the system compiler, counting its runs
        cc.write_text(f"#!/bin/sh\necho x >> {builds}\nexec cc \"$@\"\n")
        cc.chmod(0o755)
        (tmp_path / "tmp").mkdir()
        env = {"DIST_INT_CACHE": str(cache), "CC": str(cc), "TMPDIR": str(tmp_path / "tmp")}
        assert _fresh_status(env) == "native kernel"
        first = len(builds.read_text().splitlines())
        assert _fresh_status(env) == "native kernel" and _fresh_status(env) == "native kernel"
        assert len(builds.read_text().splitlines()) == first == 2  # the cache's, then the private folder's
        assert any(p.name.endswith(".unusable") for p in cache.iterdir())
    finally:
        subprocess.run(["umount", "-l", str(cache)])
