"""What a finished training owes its user (docs/design.md, "A finished training is never lost" and "Values
are the data's"): the summary whatever an export or a metric does, a rerun that finishes only what is
missing, values normalized by the data's range, outputs that open in other tools (each read back by a
second library), and the commands users type failing with one clear line."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, read_summary, run_train, train_env

QUICK = ["train.log_every=10", "train.eval_every=0", "checkpoint.every=0", "model.hidden=16", "model.layers=3",
         "train.steps=20"]


def _train_ok(args, nproc=0):
    proc = run_train(args, nproc=nproc)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


# ---- a finished training is never lost -------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("channels", [2, 4])
def test_volumes_of_any_channel_count_export_in_the_source_layout(tmp_path, channels):
    """(z, y, x, 2) and RGBA stacks used to train and then crash at export: now the TIFF is written in the
    source's dtype and layout (read back by libtiff through imagecodecs) and the output is valid OME-Zarr."""
    import imagecodecs
    import tifffile
    import zarr
    from ome_zarr_models.v05.image import Image

    rng = np.random.default_rng(0)
    vol = (rng.random((6, 20, 24, channels)) * 3000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", vol, photometric="rgb" if channels == 4 else "minisblack",
                     planarconfig="contig", extrasamples=["unassalpha"] if channels == 4 else ["unspecified"])
    _train_ok([f"run.dir={tmp_path / 'r'}", f"signal.path={tmp_path / 'v.tif'}", "signal.chunk=8", *QUICK])
    summary = read_summary(tmp_path / "r")
    assert summary["kind"] == "volume" and summary["warnings"] == [] and summary["missing"] == []
    out = tmp_path / "r" / "reconstruction.tif"
    got = tifffile.imread(out)
    assert got.shape == vol.shape and got.dtype == np.uint16
    page = imagecodecs.tiff_decode(out.read_bytes(), index=3)  # libtiff, not tifffile
    assert np.array_equal(page.reshape(got[3].shape), got[3])
    Image.from_zarr(zarr.open_group(tmp_path / "r" / "reconstruction.zarr", mode="r"))  # OME-Zarr 0.5


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-rank image run (its folder is copied by the tests that change it)."""
    from PIL import Image

    from conftest import smooth_image

    d = tmp_path_factory.mktemp("finished")
    Image.fromarray(smooth_image(48, 40)).save(d / "img.png")
    args = [f"signal.path={d / 'img.png'}", "signal.chunk=16", *QUICK]
    _train_ok([f"run.dir={d / 'run'}", *args], nproc=2)
    return d / "run", args


@pytest.mark.slow
def test_a_failed_export_is_a_warning_and_the_rerun_does_only_what_is_missing(finished, tmp_path):
    run, args = finished
    work = tmp_path / "run"
    shutil.copytree(run, work)
    before = read_summary(work)
    # A crash after the last step lost the outputs, and the export's destination cannot be written now.
    (work / "summary.json").unlink()
    (work / "reconstruction.png").unlink()
    (work / "reconstruction.png").mkdir()
    (work / "reconstruction.png" / "in-the-way").write_text("x")
    proc = _train_ok([f"run.dir={work}", *args], nproc=2)
    summary = read_summary(work)
    assert summary["missing"] == ["export"] and "exporting the reconstruction failed" in summary["warnings"][0]
    assert "warning: exporting the reconstruction failed" in proc.stdout
    assert summary["psnr_db"] == before["psnr_db"] and summary["train_time_s"] == before["train_time_s"]
    assert (work / "reconstruction.zarr").is_dir()  # everything but the export is there

    rows = _collect(work.parent)
    assert rows["run"]["status"] == "complete-with-warnings"

    shutil.rmtree(work / "reconstruction.png")
    again = _train_ok([f"run.dir={work}", *args], nproc=2)
    assert "doing what is missing: export" in again.stdout and "step 10/" not in again.stdout  # no training
    summary = read_summary(work)
    assert summary["missing"] == [] and summary["warnings"] == [] and (work / "reconstruction.png").is_file()
    third = _train_ok([f"run.dir={work}", *args])
    assert "nothing is missing" in third.stdout


def _collect(root):
    import csv

    out = subprocess.run([sys.executable, "-m", "dist_int", "collect", str(root)], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    return {row["run"]: row for row in csv.DictReader((root / "runs.csv").open())}


@pytest.mark.slow
def test_collect_and_report_tell_unfinished_runs(finished, tmp_path):
    run, _ = finished
    shutil.copytree(run, tmp_path / "done")
    shutil.copytree(run, tmp_path / "cut")
    (tmp_path / "cut" / "summary.json").unlink()  # trained, but the outputs never came
    rows = _collect(tmp_path)
    assert rows["done"]["status"] == "complete" and rows["cut"]["status"] == "not finished (trained)"
    assert rows["cut"]["steps"] == "20"
    report = subprocess.run([sys.executable, "-m", "dist_int", "report", str(tmp_path / "done"), str(tmp_path / "cut"),
                             "--out", str(tmp_path / "rep")], cwd=ROOT, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "not finished (no summary.json)" in html and "field size (bytes)" in html


@pytest.mark.slow
def test_a_shape_without_a_surface_keeps_its_summary(tmp_path):
    """A field with no zero level set on the grid: the summary is written (IoU, no Chamfer, a warning),
    there is no PLY, and the same command does not train again."""
    from dist_int.synth import synth_shape

    mesh = synth_shape(tmp_path / "washer.ply")
    # On [0, 1] targets an untrained field sits near 0, the signed distance -2: inside everywhere.
    args = [f"run.dir={tmp_path / 'r'}", f"signal.path={mesh}", "signal.points=2000", "signal.chunk=500",
            "signal.target_range=unit", *QUICK, "train.steps=1"]
    proc = _train_ok(args)
    summary = read_summary(tmp_path / "r")
    assert "iou" in summary and "chamfer" not in summary and summary["missing"] == []
    assert "no zero level set" in summary["warnings"][0] and "IoU" in proc.stdout
    assert not (tmp_path / "r" / "reconstruction.ply").exists()
    assert summary["reconstruction"].endswith("reconstruction.zarr")
    assert "nothing is missing" in _train_ok(args).stdout


# ---- values as the data has them -------------------------------------------------------------------------
@pytest.mark.slow
def test_values_are_normalized_by_the_datas_range(tmp_path):
    """A signed volume (values 0..1162 in int16, as a CT or MRI crop comes) and an unsigned image using a
    small part of uint16: the data's range maps to [0, 1], the summary names it, and the PSNR is on it;
    the dtype's range only when asked."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, 16),) * 3, indexing="ij")
    vol = (581 + 580 * np.sin(3 * x) * np.cos(2 * y) * np.cos(z)).round().astype(np.int16)
    vol[0, 0, 0], vol[-1, -1, -1] = 0, 1162
    tifffile.imwrite(tmp_path / "ct.tif", vol)
    img = (1000 + 2000 * rng.random((32, 32))).astype(np.uint16)
    Image.fromarray(img).save(tmp_path / "scan.png")
    for name, src, lo, hi in (("ct", "ct.tif", 0, 1162), ("scan", "scan.png", int(img.min()), int(img.max()))):
        _train_ok([f"run.dir={tmp_path / name}", f"signal.path={tmp_path / src}", "signal.chunk=8", *QUICK])
        s = read_summary(tmp_path / name)
        assert s["value_range"] == s["data_range"] == [lo, hi] and s["value_range_is"] == "data"
        assert f"data range {hi - lo}" in s["psnr_is"]
    # PSNR on the data's range, from the exported TIFF.
    got = tifffile.imread(tmp_path / "ct" / "reconstruction.tif").astype(np.float64)
    psnr = 10 * np.log10(1162 ** 2 / np.mean((got - vol) ** 2))
    assert read_summary(tmp_path / "ct")["psnr_db"] == pytest.approx(psnr, abs=0.2)
    # The dtype's range, asked for: the same data on -32768..32767 looks 35 dB better.
    _train_ok([f"run.dir={tmp_path / 'ct-dtype'}", f"signal.path={tmp_path / 'ct.tif'}", "signal.chunk=8",
               "signal.value_range=dtype", *QUICK])
    s = read_summary(tmp_path / "ct-dtype")
    assert s["value_range"] == [-32768, 32767] and s["value_range_is"] == "dtype"
    assert s["psnr_db"] > read_summary(tmp_path / "ct")["psnr_db"] + 20


@pytest.mark.slow
def test_loud_float_audio_keeps_psnr_on_the_waveforms_range_2(tmp_path):
    """A float WAV peaking at 1.5: normalized by its peak (so nothing clips), PSNR still the INT paper's,
    data range 2 on the waveform (checked from the exported WAV, read by scipy, not soundfile)."""
    import soundfile as sf
    from scipy.io import wavfile

    t = np.arange(4000) / 8000
    wave = (1.5 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
    sf.write(str(tmp_path / "loud.wav"), wave, 8000, subtype="FLOAT")
    _train_ok([f"run.dir={tmp_path / 'r'}", f"signal.path={tmp_path / 'loud.wav'}", "signal.chunk=500",
               "model.w0_first=300", *QUICK, "train.steps=60"])
    s = read_summary(tmp_path / "r")
    rate, got = wavfile.read(tmp_path / "r" / "reconstruction.wav")
    assert rate == 8000 and got.dtype == np.float32 and got.shape == wave.shape
    assert s["value_range"] == pytest.approx([-1.5, 1.5], abs=1e-3) and "data range 2 " in s["psnr_is"]
    assert s["psnr_db"] == pytest.approx(10 * np.log10(4 / np.mean((got - wave) ** 2)), abs=0.1)


# ---- outputs that open in the tools users have -----------------------------------------------------------
@pytest.mark.slow
def test_image_outputs_are_valid_ome_zarr_and_a_pyramidal_ome_tiff(tmp_path):
    import tifffile
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image as OmeImage
    from PIL import Image

    for channels in (1, 3):
        name = f"c{channels}"
        from conftest import smooth_image

        Image.fromarray(smooth_image(600, 520, channels).squeeze()).save(tmp_path / f"{name}.png")
        _train_ok([f"run.dir={tmp_path / name}", f"signal.path={tmp_path / name}.png", *QUICK, "train.steps=2",
                   "render.format=tiff"])
        store = tmp_path / name / "reconstruction.zarr"
        model = OmeImage.from_zarr(zarr.open_group(store, mode="r"))
        assert len(model.attributes.ome.multiscales[0].datasets) == 3  # 600 -> 300 -> 150
        (node,) = list(Reader(parse_url(str(store)))())  # the reader napari uses
        assert [level.shape for level in node.data] == [(channels, 600, 520), (channels, 300, 260), (channels, 150, 130)]
        with tifffile.TiffFile(tmp_path / name / "reconstruction.tif") as tif:
            series = tif.series[0]
            assert tif.is_ome and [lvl.shape[:2] for lvl in series.levels] == [(600, 520), (300, 260), (150, 130)]
            level1 = series.levels[1].asarray()
        assert np.array_equal(level1.reshape(300, 260, channels),
                              np.asarray(zarr.open_array(store / "1")).transpose(1, 2, 0))


@pytest.mark.slow
def test_video_keeps_an_odd_size_and_reads_back_in_ffmpeg(tmp_path):
    """A 17x33 clip comes back as 17x33 (4:4:4 H.264 where 4:2:0 cannot hold odd sides), at the source's
    rate, frame for frame as a second decoder (FFmpeg through imageio-ffmpeg) reads it."""
    import av
    import imageio_ffmpeg
    import zarr
    from ome_zarr_models.v05.image import Image

    from dist_int.modality.video import video_pix_fmt

    with av.open(str(tmp_path / "odd.mp4"), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 33, 17, video_pix_fmt(17, 33)
        for i in range(6):
            frame = np.full((17, 33, 3), 40 * i, np.uint8)
            frame[:, : 5 + i] = 250
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        c.mux(s.encode())
    _train_ok([f"run.dir={tmp_path / 'r'}", f"signal.path={tmp_path / 'odd.mp4'}", "signal.chunk=[2,8,8]", *QUICK])
    reader = imageio_ffmpeg.read_frames(str(tmp_path / "r" / "reconstruction.mp4"))
    meta = next(reader)
    frames = list(reader)
    assert tuple(meta["size"]) == (33, 17) and meta["fps"] == 10 and len(frames) == 6
    Image.from_zarr(zarr.open_group(tmp_path / "r" / "reconstruction.zarr", mode="r"))


@pytest.mark.slow
def test_a_mesh_reads_back_in_a_second_library(tmp_path):
    """reconstruction.ply (written by trimesh) read by plyfile: triangles in the source's units."""
    import plyfile
    import trimesh

    from dist_int.synth import synth_shape

    mesh = synth_shape(tmp_path / "washer.ply")
    _train_ok([f"run.dir={tmp_path / 'r'}", f"signal.path={mesh}", "signal.points=4000", "signal.chunk=500",
               "model.hidden=32", "model.layers=3", "optim.lr=1e-3", "train.steps=150", "train.log_every=50",
               "train.eval_every=0", "checkpoint.every=0"])
    ply = plyfile.PlyData.read(str(tmp_path / "r" / "reconstruction.ply"))
    verts = np.stack([ply["vertex"][a] for a in "xyz"], 1)
    assert len(ply["face"]) > 100 and np.allclose(verts.min(0), trimesh.load(mesh).bounds[0], atol=0.1)


# ---- the commands users type -----------------------------------------------------------------------------
SYNTH_BAD = {
    "missing folder": (["speech", "{tmp}/no/such/dir/a.wav"], "does not exist; create it first"),
    "negative size": (["volume", "{tmp}/v.tif", "--size", "-4"], "--size must be a positive number"),
    "NaN size": (["video", "{tmp}/v.mp4", "--size", "nan"], "--size must be a positive number"),
    "zero size": (["video", "{tmp}/v.mp4", "--size", "0"], "--size must be a positive number"),
    "zero seconds": (["speech", "{tmp}/a.wav", "--seconds", "0"], "--seconds must be a positive number"),
    "size for a shape": (["shape", "{tmp}/s.ply", "--size", "64"], "synth shape takes no --size"),
    "video as wav": (["video", "{tmp}/v.wav"], "synth video writes .mp4"),
    "shape as wav": (["shape", "{tmp}/s.wav"], "synth shape writes .ply"),
    "wav data as mp3": (["speech", "{tmp}/x.mp3"], "synth speech writes .wav or .flac"),
    "tiff data as png": (["volume", "{tmp}/x.png"], "synth volume writes .tif"),
    "no name": (["speech", ""], "give the file to write"),
}


def test_synth_refuses_what_it_cannot_write(tmp_path, capsys):
    from dist_int.synth import synth_main

    for name, (argv, message) in SYNTH_BAD.items():
        argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
        assert synth_main(argv) == 2, name  # the command's own exit code; an exception would fail the test
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
    assert synth_main(["speech", str(tmp_path / "a.flac"), "--seconds", "0.1"]) == 0
    import soundfile as sf

    assert sf.info(str(tmp_path / "a.flac")).format == "FLAC"


def test_a_new_signal_kind_is_one_module(tmp_path, monkeypatch, capsys):
    """A kind registered in MODALITIES, and nowhere else, gets its procedural signal in `synth` (command,
    help, option checks) and its picture in the report (docs/extending.md, "A kind of signal")."""
    from dist_int.modality import MODALITIES, base
    from dist_int.report import figures
    from dist_int.synth import synth_main

    written = []

    class Tone(base.Modality):
        kind = "tone"
        synth = base.Synth("tone", (".tone",), lambda dest, seconds, seed, **_: written.append((dest, seconds)) or dest,
                           seconds=3.0, about="a test tone")

        def figure(self, plt, run):
            fig, ax = plt.subplots()
            ax.plot([0, 1], [0, 1])
            return fig

    monkeypatch.setitem(MODALITIES, "tone", Tone())
    with pytest.raises(SystemExit):
        synth_main(["--help"])
    assert "tone (a test tone, .tone)" in " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert synth_main(["tone", str(tmp_path / "a.tone")]) == 0 and written == [(str(tmp_path / "a.tone"), 3.0)]
    assert synth_main(["tone", str(tmp_path / "b.tone"), "--size", "8"]) == 2
    assert "synth tone takes no --size" in capsys.readouterr().err and len(written) == 1

    class Run:  # what signal_figure reads of a run folder: its store's kind
        store = type("Store", (), {"meta": {"kind": "tone"}})()

    assert figures.signal_figure(Run(), tmp_path / "tone.png") and (tmp_path / "tone.png").stat().st_size > 0
    monkeypatch.setattr(Tone, "figure", base.Modality.figure)
    assert not figures.signal_figure(Run(), tmp_path / "none.png") and not (tmp_path / "none.png").exists()


@pytest.mark.slow
def test_a_stale_deepspeed_build_lock_does_not_hang_a_start(tmp_path):
    """A start killed while DeepSpeed JIT-built its CPU communication op left a lock that made every later
    start wait forever: no JIT build runs now (engine/launch.py)."""
    cache = tmp_path / "extensions"
    (cache / "deepspeed_shm_comm").mkdir(parents=True)
    (cache / "deepspeed_shm_comm" / "lock").write_text("")
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "train.py"), f"run.dir={tmp_path / 'r'}",
                           "signal.path=builtin:camera@32", "signal.chunk=8", *QUICK, "train.steps=2"], cwd=ROOT,
                          env=train_env(TORCH_EXTENSIONS_DIR=str(cache)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (cache / "deepspeed_shm_comm" / "lock").exists() and "built successfully" not in proc.stdout


@pytest.mark.slow
def test_smaller_defects_are_one_error_line(tmp_path):
    """Each of the review's smaller findings: an error line before training, nothing left behind."""
    from PIL import Image

    from conftest import smooth_image
    from dist_int.synth import synth_shape, synth_speech

    frames = [Image.fromarray(smooth_image(16, 16, 3, seed=i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    synth_speech(tmp_path / "a.wav", seconds=0.2, rate=8000)
    (tmp_path / "wrong.obj").write_bytes(synth_shape(tmp_path / "w.ply").read_bytes())
    cases = {
        "empty chunk list": ([f"signal.path={tmp_path / 'a.wav'}", "signal.chunk=[]"], "signal.chunk must be"),
        "animated gif": ([f"signal.path={tmp_path / 'anim.gif'}"], "animated image of 3 frames"),
        "render.format for audio": ([f"signal.path={tmp_path / 'a.wav'}", "render.format=png"],
                                    "render.format = \"png\" chooses an image's picture"),
        "PLY bytes named .obj": ([f"signal.path={tmp_path / 'wrong.obj'}"], "holds PLY data but is named .obj"),
    }
    for name, (args, message) in cases.items():
        run = tmp_path / f"run-{name.replace(' ', '-')}"
        proc = run_train([f"run.dir={run}", *QUICK, *args])
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert not run.exists(), name
    proc = run_train(["--config", str(tmp_path), f"run.dir={tmp_path / 'x'}"])
    assert proc.returncode == 2 and "is a folder; give a TOML file" in proc.stderr


def test_a_run_keeps_its_chunks_and_its_checkpoints_are_plain_json(finished, tmp_path):
    run, args = finished
    work = tmp_path / "run"
    shutil.copytree(run, work)
    proc = run_train([f"run.dir={work}", *args, "signal.chunk=8", "run.allow_config_change=true"])
    assert proc.returncode == 2 and "signal.chunk" in proc.stderr and "cannot change them" in proc.stderr
    for meta in work.glob("checkpoints/step-*/meta.json"):
        json.loads(meta.read_text(), parse_constant=lambda c: pytest.fail(f"{meta} holds {c}"))


def test_report_dependencies_install_with_the_package():
    from importlib.metadata import requires

    assert any(r.startswith("matplotlib") and "extra" not in r for r in requires("dist_int"))


# ---- the house -------------------------------------------------------------------------------------------
def test_the_layers_import_one_way():
    """signal/ never imports modality/ (a kind's reader lives with its kind; what both need sits in
    signal/source.py), and no two areas of the package import each other, at module level or inside
    functions (docs/design.md, "Modalities")."""
    import ast

    package = ROOT / "dist_int"
    uses: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        area = parts[0]  # a subpackage, or a top-level module (cli, config, errors ...)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                depth = len(parts) - 1 - (node.level - 1)  # the package the relative import starts from
                base = list(parts[:depth])
                # `from .. import synth` names modules as its names: each is a target of its own.
                targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
                for target in targets:
                    other = target[0]
                    if other != area:
                        uses.setdefault(area, set()).add(other)
    assert "modality" not in uses.get("signal", set())
    circles = sorted((a, b) for a in uses for b in uses[a] if a < b and a in uses.get(b, set()))
    assert circles == [], circles


def test_ingest_takes_the_kinds_default_chunks(tmp_path):
    """`python -m dist_int ingest SRC DEST` without --chunk (it refused every call without it)."""
    out = subprocess.run([sys.executable, "-m", "dist_int", "ingest", "builtin:camera@64", str(tmp_path / "c.zarr")],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "1 chunks of (64, 64)" in out.stdout, out.stderr
