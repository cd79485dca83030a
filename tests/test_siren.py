import math

import torch

from dist_int.model import Siren


def test_layer_count_and_params():
    m = Siren(2, 3, hidden=256, layers=6)
    linears = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear)]
    assert len(linears) == 6  # 5 sine + 1 linear, as the paper counts
    assert m.num_params == 2 * 256 + 256 + 4 * (256 * 256 + 256) + 256 * 3 + 3  # ~265K for RGB


def test_init_bounds():
    torch.manual_seed(0)
    w0, hidden = 30.0, 256
    m = Siren(2, 1, hidden=hidden, layers=4, w0=w0)
    first = m.net[0].linear.weight
    assert first.abs().max() <= 1 / 2 and first.abs().max() > 0.45  # U(-1/d_in, 1/d_in), d_in = 2
    for layer in list(m.net)[1:]:
        bound = math.sqrt(6 / hidden) / w0
        w = layer.linear.weight
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert m.out.weight.abs().max() <= math.sqrt(6 / hidden) / w0


def test_forward_shape_and_activation_statistics():
    torch.manual_seed(0)
    m = Siren(2, 3, hidden=256, layers=6)
    x = torch.rand(4096, 2) * 2 - 1
    assert m(x).shape == (4096, 3)
    h = x
    for layer in m.net:
        h = layer(h)
    # SIREN's init keeps activations arcsine-distributed in [-1, 1] with std ~ 1/sqrt(2) through depth.
    assert 0.6 < h.std().item() < 0.8


def test_long_axes_keep_neighbouring_samples_apart(tmp_path):
    """An axis longer than float32 resolves on [-1, 1]: coordinates come from integer positions in float64
    and the first layer runs in float64, so the last two samples of a 2^27-long axis stay different."""
    import zarr

    from dist_int.signal import Shard, SignalStore
    from dist_int.signal import ATTR

    n = 1 << 27
    arr = zarr.create_array(tmp_path / "long.zarr", shape=(n, 2, 1), chunks=(1 << 16, 2, 1), dtype="uint8",
                            fill_value=0)
    arr.attrs[ATTR] = {"kind": "image", "source": "test", "source_dtype": "uint8", "value_range": [0, 255]}
    store = SignalStore(tmp_path / "long.zarr")
    last = store.num_chunks - 1
    shard = Shard(store, [last], torch.zeros(store.chunk_size(last), 1, dtype=torch.uint8))
    rows = torch.tensor([shard.num_points - 4, shard.num_points - 2])  # positions (n-2, 0) and (n-1, 0)
    coords = shard.coords(rows)
    assert coords.dtype == torch.float64 and coords[0, 0] < coords[1, 0] == 1.0
    assert coords[0, 0].float() == coords[1, 0].float()  # float32 could not tell them apart
    torch.manual_seed(0)
    model = Siren(2, 1, 16, 3, w0=30.0, w0_first=3000.0)
    with torch.no_grad():
        out = model(coords)
    assert out.dtype == torch.float32 and out[0, 0] != out[1, 0]
