import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image

from conftest import smooth_image
from dist_int.signal import Shard, SignalError, SignalStore, assign_chunks
from dist_int.modality import ingest


def _roundtrip(src, dest, chunk=16):
    ingest(str(src), dest, chunk)
    store = SignalStore(dest)
    raw = zarr.open_array(dest, mode="r")[...]
    return store, raw


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_roundtrip(tmp_path, channels):
    img = smooth_image(40, 56, channels)
    src = tmp_path / "a.png"
    Image.fromarray(img[..., 0] if channels == 1 else img).save(src)
    store, raw = _roundtrip(src, tmp_path / "a.zarr")
    assert raw.shape == (40, 56, channels) and np.array_equal(raw.reshape(img.shape), img)
    # Normalized by the data's own range (docs/design.md, "Values are the data's"); the dtype's is recorded.
    assert store.meta["value_range"] == [img.min(), img.max()] == store.meta["data_range"]
    assert store.meta["dtype_range"] == [0, 255] and store.meta["source_dtype"] == "uint8"
    assert len(store.meta["source_sha256"]) == 64
    assert store.grid == (3, 4) and store.chunk_size(11) == 8 * 8


def test_jpeg_and_16bit_png(tmp_path):
    Image.fromarray(smooth_image(32, 32, 3)).save(tmp_path / "a.jpg", quality=95)
    store, raw = _roundtrip(tmp_path / "a.jpg", tmp_path / "a.zarr")
    assert raw.shape == (32, 32, 3)
    img16 = (smooth_image(32, 32, 1)[..., 0].astype(np.uint16) * 257)
    Image.fromarray(img16).save(tmp_path / "b.png")
    store, raw = _roundtrip(tmp_path / "b.png", tmp_path / "b.zarr")
    assert store.meta["value_range"] == [img16.min(), img16.max()]
    store = SignalStore(tmp_path / "b.zarr", "dtype")  # the dtype's full range, when asked
    assert store.value_range == (0, 65535)
    shard = Shard.load(store, [0])
    assert shard.raw.dtype == torch.int16  # uint16 held bit for bit in the signed type of its width
    vals = shard.unit_values()
    assert vals.dtype == torch.float32 and 0 <= vals.min() and vals.max() <= 1
    expect = store.read_raw_chunk(0).astype(np.float64) / 65535
    np.testing.assert_allclose(vals.numpy(), expect, atol=1e-6)
    assert float(vals.max()) > 0.5  # values above 32767 are not read as negative


@pytest.mark.parametrize("kind", ["tiff", "bigtiff", "ome"])
def test_tiff_roundtrip(tmp_path, kind):
    img = (smooth_image(70, 90, 3).astype(np.uint16) * 200)
    src = tmp_path / ("a.ome.tif" if kind == "ome" else "a.tif")
    if kind == "ome":
        tifffile.imwrite(src, img[None, None], ome=True, metadata={"axes": "TZYXS"}, photometric="rgb")
    else:
        tifffile.imwrite(src, img, bigtiff=(kind == "bigtiff"), tile=(32, 32), photometric="rgb",
                         compression="zlib")
    store, raw = _roundtrip(src, tmp_path / "a.zarr", chunk=32)
    assert np.array_equal(raw, img)
    assert store.meta["value_range"] == [img.min(), img.max()] and store.meta["dtype_range"] == [0, 65535]


def test_float_tiff_normalizes_by_its_range(tmp_path):
    img = np.linspace(-2, 6, 40 * 40, dtype=np.float32).reshape(40, 40)
    tifffile.imwrite(tmp_path / "f.tif", img)
    store, _ = _roundtrip(tmp_path / "f.tif", tmp_path / "f.zarr")
    assert store.meta["value_range"] == [-2.0, 6.0]
    all_vals = Shard.load(store, list(range(store.num_chunks))).unit_values()
    assert float(all_vals.min()) == 0.0 and float(all_vals.max()) == 1.0


def test_large_tiff_is_ingested_lazily(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (4096, 2048, 3), dtype=np.uint8)  # 24 MiB
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, img, bigtiff=True, tile=(256, 256), photometric="rgb")
    del img
    tracemalloc.start()
    ingest(str(src), tmp_path / "big.zarr", chunk=128)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 6 * 2**20, f"ingest held {peak / 2**20:.1f} MiB; expected band-by-band reads"


@pytest.mark.parametrize("make, words", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(b"this is not an image at all"), "cannot read image"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "cannot read image"),
])
def test_bad_image_files(tmp_path, make, words):
    src = tmp_path / "x.png"
    make(src)
    with pytest.raises(SignalError, match=words):
        ingest(str(src), tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
    assert not list(tmp_path.glob(".x.zarr.tmp*"))


def test_truncated_png(tmp_path):
    src = tmp_path / "t.png"
    Image.fromarray(smooth_image(64, 64, 3)).save(src)
    src.write_bytes(src.read_bytes()[:300])
    with pytest.raises(SignalError):
        ingest(str(src), tmp_path / "t.zarr")


def test_nan_and_wrong_dims(tmp_path):
    img = np.ones((20, 20), np.float32)
    img[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", img)
    with pytest.raises(SignalError, match="NaN or Inf"):
        ingest(str(tmp_path / "n.tif"), tmp_path / "n.zarr")
    tifffile.imwrite(tmp_path / "v.tif", np.zeros((3, 20, 20, 7), np.uint8))
    with pytest.raises(SignalError, match="shape"):
        ingest(str(tmp_path / "v.tif"), tmp_path / "v.zarr")


def test_never_overwrites(tmp_path, png_image):
    dest = tmp_path / "s.zarr"
    ingest(str(png_image), dest)
    before = (dest / "zarr.json").read_bytes()
    with pytest.raises(SignalError, match="already exists"):
        ingest(str(png_image), dest)
    assert (dest / "zarr.json").read_bytes() == before


def test_corrupt_store(tmp_path, png_image):
    dest = tmp_path / "s.zarr"
    ingest(str(png_image), dest, 16)
    with pytest.raises(SignalError, match="not a Zarr v3 store"):
        SignalStore(tmp_path)
    chunk_files = sorted(p for p in (dest / "c").rglob("*") if p.is_file())
    chunk_files[0].write_bytes(b"garbage")
    store = SignalStore(dest)
    with pytest.raises(SignalError, match="corrupt"):
        for c in range(store.num_chunks):
            store.read_raw_chunk(c)
    (dest / "zarr.json").write_text("{ not json")
    with pytest.raises(SignalError, match="corrupt"):
        SignalStore(dest)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5, 16])
def test_shards_disjoint_complete_balanced(world_size):
    owners = assign_chunks(16, world_size, seed=3)
    flat = sorted(c for o in owners for c in o)
    assert flat == list(range(16))
    sizes = [len(o) for o in owners]
    assert max(sizes) - min(sizes) <= 1
    # Interleaved: every block of world_size consecutive chunks has one chunk on each rank.
    for start in range(0, 16 - world_size + 1, world_size):
        block = set(range(start, start + world_size))
        assert all(len(block & set(o)) == 1 for o in owners)


def test_more_ranks_than_chunks():
    with pytest.raises(SignalError, match="only 4 chunks"):
        assign_chunks(4, 8, 0)


def test_shard_points_cover_signal(tmp_path, png_image):
    ingest(str(png_image), tmp_path / "s.zarr", 16)
    store = SignalStore(tmp_path / "s.zarr")
    owners = assign_chunks(store.num_chunks, 3, 0)
    shards = [Shard.load(store, o) for o in owners]
    gids = np.concatenate([s.gids().numpy() for s in shards])
    assert np.array_equal(np.sort(gids), np.arange(64 * 64))
    raw = smooth_image().astype(np.float64)
    img = (raw - raw.min()) / (raw.max() - raw.min())  # the data's range maps to [0, 1]
    for s in shards:
        # Compact: nothing per point but the raw values in the source dtype.
        assert s.raw.dtype == torch.uint8 and s.raw.shape == (s.num_points, 3)
        yx = np.stack(np.unravel_index(s.gids().numpy(), (64, 64)), 1)
        np.testing.assert_allclose(s.unit_values().numpy(), img[yx[:, 0], yx[:, 1]], atol=1e-6)
        np.testing.assert_allclose(s.coords().numpy(), yx / 63 * 2 - 1, atol=1e-6)
        rows = torch.tensor([0, 5, s.num_points - 1])
        assert torch.equal(s.gids(rows), s.gids()[rows]) and torch.equal(s.coords(rows), s.coords()[rows])


def test_shard_geometry_on_uneven_chunks_and_target_ranges(tmp_path):
    """Edge chunks smaller than the chunk size, positions and targets per row, [-1, 1] and [0, 1]."""
    from dist_int.signal import TargetRange

    img = smooth_image(37, 23, 1)[..., 0]
    Image.fromarray(img).save(tmp_path / "odd.png")
    store = SignalStore(ingest(str(tmp_path / "odd.png"), tmp_path / "odd.zarr", 16))
    shard = Shard.load(store, [5, 0, 3], target_range=TargetRange.named("symmetric"))
    pos = shard.positions(shard.all_rows()).numpy()
    expect = np.concatenate([np.stack(np.meshgrid(np.arange(*sl[0].indices(37)), np.arange(*sl[1].indices(23)),
                                                  indexing="ij"), -1).reshape(-1, 2)
                             for sl in (store.chunk_slices(c) for c in (5, 0, 3))])
    assert np.array_equal(pos, expect)
    unit = (img[pos[:, 0], pos[:, 1]] - float(img.min())) / (float(img.max()) - float(img.min()))
    np.testing.assert_allclose(shard.targets().numpy()[:, 0], unit * 2 - 1, atol=1e-6)


def _perfect_output(tmp_path, store, name="r.zarr"):
    """The output pyramid of a perfect reconstruction: level 0 holds the source values, built as the
    trainer builds it (render, then each level from the one below)."""
    from dist_int.render import build_level, create_output, num_levels, open_level

    path = tmp_path / name
    create_output(path, store)
    open_level(path, 0, "r+")[...] = store.array[...].transpose(2, 0, 1)
    for level in range(1, num_levels(path)):
        build_level(path, level, 0, 1)
    return path


@pytest.mark.parametrize("dtype", ["int16", "uint16", "uint8", "float32", "int32"])
def test_export_returns_the_source_values(tmp_path, dtype):
    """A perfect reconstruction exports as the source, in its dtype and value range: signed integers
    too (raw -12600 is not 16384 + offset), and floats on their own scale."""
    import tifffile

    from dist_int.render import export

    rng = np.random.default_rng(0)
    if dtype.startswith("float"):
        src = (rng.random((20, 24, 1)) * 40 - 7).astype(dtype)
    else:
        info = np.iinfo(dtype)
        src = rng.integers(max(info.min, -12600), min(info.max, 12700), (20, 24, 1), endpoint=True).astype(dtype)
    tifffile.imwrite(tmp_path / "src.tif", src[..., 0])
    store = SignalStore(ingest(str(tmp_path / "src.tif"), tmp_path / "s.zarr", 8))
    path = _perfect_output(tmp_path, store)
    for fmt in ("auto", "tiff"):
        out = export(path, tmp_path / "recon", fmt)
        if out.suffix == ".zarr":  # auto: signed and float sources get the pyramid only
            assert dtype in ("int16", "float32", "int32") and out == path
            continue
        back = tifffile.imread(out) if out.suffix == ".tif" else np.asarray(Image.open(out))
        back = back.reshape(src.shape)
        assert back.dtype == src.dtype and np.array_equal(back, src)


def test_output_is_an_ome_zarr_pyramid_and_a_pyramidal_tiff(tmp_path):
    """Levels halve the image down to 256 px (odd edges repeat their last pixel), each the rounded 2x2
    mean of the one below; the OME-Zarr metadata names them with their scale; the BigTIFF carries the
    same levels as SubIFDs; two ranks sharing the levels write what one writes."""
    import tifffile
    import zarr

    from dist_int.render import build_level, create_output, export, num_levels, open_level

    img = np.random.default_rng(1).integers(0, 256, (1030, 600, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "big.png")
    store = SignalStore(ingest(str(tmp_path / "big.png"), tmp_path / "s.zarr", 128))
    path = _perfect_output(tmp_path, store)
    assert num_levels(path) == 4
    shapes = [open_level(path, i).shape for i in range(4)]
    assert shapes == [(3, 1030, 600), (3, 515, 300), (3, 258, 150), (3, 129, 75)]
    ome = dict(zarr.open_group(path, mode="r").attrs)["ome"]
    assert ome["version"] == "0.5" and [a["name"] for a in ome["multiscales"][0]["axes"]] == ["c", "y", "x"]
    assert ome["multiscales"][0]["datasets"][2]["coordinateTransformations"][0]["scale"] == [1.0, 4.0, 4.0]
    one = open_level(path, 1)[...].astype(np.float64)
    expect = np.round(img.transpose(2, 0, 1).astype(np.float64).reshape(3, 515, 2, 300, 2).mean(axis=(2, 4)))
    assert np.array_equal(one, expect)
    two = open_level(path, 2)[...]
    padded = np.pad(one, ((0, 0), (0, 1), (0, 0)), mode="edge")  # 515 rows: the last one repeats
    assert np.array_equal(two, np.round(padded.reshape(3, 258, 2, 150, 2).mean(axis=(2, 4))))
    # Two ranks, each its own chunks of every level, write the same pyramid.
    other = tmp_path / "two.zarr"
    create_output(other, store)
    open_level(other, 0, "r+")[...] = img.transpose(2, 0, 1)
    for level in range(1, 4):
        for rank in (1, 0):
            build_level(other, level, rank, 2)
    assert all(np.array_equal(open_level(other, i)[...], open_level(path, i)[...]) for i in range(4))
    tif = export(path, tmp_path / "recon", "tiff")
    with tifffile.TiffFile(tif) as t:
        levels = t.series[0].levels
        assert [lv.shape for lv in levels] == [(1030, 600, 3), (515, 300, 3), (258, 150, 3), (129, 75, 3)]
        assert t.pages[0].is_tiled and np.array_equal(levels[2].asarray(), two.transpose(1, 2, 0))
        assert np.array_equal(levels[0].asarray(), img)


def test_ssim_on_tiny_images(tmp_path):
    """Images under 7 pixels a side get SSIM with a smaller window, or none under 3, not a crash."""
    from dist_int.render import ssim_of

    for side in (2, 3, 5, 6):
        path = tmp_path / f"tiny{side}.png"
        Image.fromarray((np.arange(side * side).reshape(side, side) * 7 % 256).astype(np.uint8)).save(path)
        store = SignalStore(ingest(str(path), tmp_path / f"t{side}.zarr", 8))
        value = ssim_of(store.array[...].transpose(2, 0, 1), store)
        assert (value is None) if side < 3 else value == pytest.approx(1.0)


def test_synth_gigapixel_is_deterministic_chunked_and_trainable(tmp_path):
    """`python -m dist_int synth gigapixel`: the same pixels for the same arguments, whatever the chunking
    (each pixel is a function of its position), a store the trainer accepts, no overwrite."""
    import subprocess
    import sys

    from conftest import ROOT
    from dist_int.synth import synth_gigapixel

    a = SignalStore(synth_gigapixel(tmp_path / "a.zarr", 100, chunk=32))
    b = SignalStore(synth_gigapixel(tmp_path / "b.zarr", 100, chunk=64))
    assert a.shape == (100, 100, 3) and a.chunk_shape == (32, 32) and a.meta["source_dtype"] == "uint8"
    assert np.array_equal(a.array[...], b.array[...])
    assert a.meta["source_sha256"] == b.meta["source_sha256"]
    pixels = a.array[...].astype(np.float64)
    assert pixels.std() > 30 and 64 < pixels.mean() < 192  # a real picture, not a flat field
    # Detail at every scale: energy in the fine half of the spectrum too, not only in the coarse one.
    spec = np.abs(np.fft.rfft2(pixels[..., 0] - pixels[..., 0].mean()))
    assert spec[25:50, 25:50].sum() > 0.01 * spec[:25, :25].sum()
    proc = subprocess.run([sys.executable, "-m", "dist_int", "synth", "gigapixel", str(tmp_path / "a.zarr"),
                           "--size", "64"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "already exists" in proc.stderr


def test_images_beyond_the_decompression_bomb_limit_need_an_explicit_yes(tmp_path, png_image, capfd):
    """Pillow's guard against hostile files stays on unless the user allows the image; then it is read
    with a warning. (The limit is lowered here so that a 64x64 image crosses it.)"""
    from PIL import Image as PILImage

    limit = PILImage.MAX_IMAGE_PIXELS
    PILImage.MAX_IMAGE_PIXELS = 1000
    try:
        with pytest.raises(SignalError, match="decompression-bomb limit.*signal.allow_large_image=true"):
            ingest(str(png_image), tmp_path / "refused.zarr", 16)
        assert not (tmp_path / "refused.zarr").exists()
        store = SignalStore(ingest(str(png_image), tmp_path / "allowed.zarr", 16, allow_large=True))
        assert store.shape == (64, 64, 3)
        assert "beyond Pillow's decompression-bomb guard" in capfd.readouterr().err
        assert PILImage.MAX_IMAGE_PIXELS == 1000  # the guard is back for everything else
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit


@pytest.mark.parametrize("tile", [5, 16, 1024])
def test_tiled_ssim_equals_whole_image_ssim(tmp_path, png_image, tile):
    """SSIM in tiles with a half-window halo is the whole-image value (bounded memory at any size)."""
    import zarr
    from skimage.metrics import structural_similarity

    from dist_int.render import ssim_of

    from dist_int.render import ssim_mean, ssim_sums

    store = SignalStore(ingest(str(png_image), tmp_path / "s.zarr", 16), "dtype")  # on 0..255, as skimage's
    target = store.array[...].astype(np.float32) / 255
    noisy = np.clip(target * 255 + np.random.default_rng(0).normal(0, 12, target.shape), 0, 255).round()
    recon = zarr.create_array(tmp_path / "r.zarr", shape=(3, 64, 64), chunks=(3, 16, 16), dtype="uint8")
    recon[...] = noisy.astype(np.uint8).transpose(2, 0, 1)
    whole = structural_similarity(target, (noisy / 255).astype(np.float32), data_range=1.0, channel_axis=-1)
    assert ssim_of(recon, store, tile=tile) == pytest.approx(whole, abs=1e-6)
    # Shared by 3 ranks, tile by tile: the sums add up to the same value.
    parts = sum(ssim_sums(recon, store, tile, rank, 3) for rank in range(3))
    assert ssim_mean(parts, store) == pytest.approx(whole, abs=1e-6)
