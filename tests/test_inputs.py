"""Inputs users really feed it: tiny images, 16-bit colour, TIFF layouts, EXIF orientation and 12-bit
data, each on real files and processes."""

import pytest
import numpy as np
from PIL import Image

from conftest import quick_train as train, read_summary, smooth_image

@pytest.mark.slow
def test_images_under_7_pixels_finish(tmp_path):
    Image.fromarray((np.arange(9).reshape(3, 3) * 20).astype(np.uint8)).save(tmp_path / "t3.png")
    proc = train(f"signal.path={tmp_path / 't3.png'}", f"run.dir={tmp_path / 'r'}", "signal.chunk=8")
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(tmp_path / "r")
    assert summary["status"] == "complete" and summary["ssim"] is not None  # a 3x3 window fits

def test_16_bit_colour_png_keeps_its_depth(tmp_path):
    import imagecodecs

    img = np.random.default_rng(0).integers(0, 65535, (24, 20, 3)).astype(np.uint16)
    img[0, 0] = 65535
    (tmp_path / "c16.png").write_bytes(imagecodecs.png_encode(img))
    from dist_int.signal import SignalStore
    from dist_int.modality import ingest

    store = SignalStore(ingest(str(tmp_path / "c16.png"), tmp_path / "s.zarr", 8))
    assert store.array.dtype == np.uint16 and np.array_equal(store.array[...], img)
    from dist_int.render import create_output, export, open_level

    create_output(tmp_path / "o.zarr", store)
    open_level(tmp_path / "o.zarr", 0, "r+")[...] = img.transpose(2, 0, 1)
    out = export(tmp_path / "o.zarr", tmp_path / "recon", "png")
    assert np.array_equal(imagecodecs.png_decode(out.read_bytes()), img)  # exported at 16 bits

def test_planar_and_channel_first_tiffs_are_images_and_stacks_volumes(tmp_path):
    import tifffile

    from dist_int.signal import SignalStore
    from dist_int.modality import ingest

    rgb = smooth_image(32, 24)
    tifffile.imwrite(tmp_path / "planar.tif", rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "cyx.ome.tif", rgb.transpose(2, 0, 1), metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([rgb[..., 0]] * 5))
    for name in ("planar.tif", "cyx.ome.tif"):
        store = SignalStore(ingest(str(tmp_path / name), tmp_path / f"{name}.zarr", 8))
        assert store.meta["kind"] == "image" and np.array_equal(store.array[...], rgb), name
    assert SignalStore(ingest(str(tmp_path / "stack.tif"), tmp_path / "s.zarr", 8)).meta["kind"] == "volume"

def test_exif_orientation_and_12_bit_data(tmp_path):
    from dist_int.signal import SignalStore
    from dist_int.modality import ingest

    img = smooth_image(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    Image.fromarray(img).save(tmp_path / "phone.png", exif=exif)
    store = SignalStore(ingest(str(tmp_path / "phone.png"), tmp_path / "p.zarr", 8))
    assert store.shape == (30, 20, 3) and np.array_equal(store.array[...], np.rot90(img, -1))
    import tifffile

    twelve = np.random.default_rng(0).integers(0, 4096, (16, 16)).astype(np.uint16)
    twelve[0, 0] = 4095
    tifffile.imwrite(tmp_path / "sensor.tif", twelve)
    store = SignalStore(ingest(str(tmp_path / "sensor.tif"), tmp_path / "s.zarr", 8))
    assert store.meta["value_range"] == [float(twelve.min()), 4095.0]  # the data's range, not 65535
