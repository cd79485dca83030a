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
