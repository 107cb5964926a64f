"""SpatialTransformer and the paper's MNIST / MNIST-addition networks: shapes, parameter budgets,
identity initialisation."""
import pytest
import torch
from torch import nn

import stn_triton
from stn_triton.modules import parse_transform
from stn_triton.models import addition, count_params, fit_width, mnist

TRANSFORMS = ["attention", "translation", "rotation_scale_translation", "affine", "projective", "tps", "tps(9)"]


def _loc(c=1, s=12, h=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, h), nn.ReLU())


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_untrained_transformer_is_identity(transform):
    x = torch.rand(3, 2, 12, 12)
    st = stn_triton.SpatialTransformer(_loc(2), transform)
    assert torch.count_nonzero(st.regressor.weight) == 0 and torch.count_nonzero(st.regressor.bias) == 0
    y, theta = st(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
    if transform.startswith("tps"):
        k = 9 if "9" in transform else 16
        assert theta.shape == (3, k, 2)
    elif transform == "projective":
        assert theta.shape == (3, 3, 3)
    else:
        assert theta.shape == (3, 2, 3)
        torch.testing.assert_close(theta, torch.eye(2, 3).expand(3, 2, 3))


def test_transformer_out_size_and_gradients():
    x = torch.rand(4, 1, 12, 12, requires_grad=True)
    st = stn_triton.SpatialTransformer(_loc(), "affine", out_size=6)
    nn.init.normal_(st.regressor.weight, std=0.01)
    y, theta = st(x)
    assert y.shape == (4, 1, 6, 6) and theta.shape == (4, 2, 3)
    y.square().sum().backward()
    assert st.regressor.weight.grad is not None and torch.count_nonzero(st.regressor.weight.grad) > 0
    assert st.loc_net[1].weight.grad is not None and x.grad is not None


def test_transformer_rejects_bad_arguments():
    with pytest.raises(ValueError):
        stn_triton.SpatialTransformer(_loc(), "shear")
    with pytest.raises(ValueError):
        stn_triton.SpatialTransformer(nn.Flatten(), "affine")  # width cannot be inferred
    st = stn_triton.SpatialTransformer(nn.Flatten(), "affine", loc_features=144)
    assert st.regressor.in_features == 144
    assert parse_transform("TPS16") == ("tps", 16) and parse_transform("tps") == ("tps", 16)


def test_fit_width_closest():
    w = fit_width(lambda h: nn.Linear(10, h), budget=1000)  # 11 h params
    assert w == 91


@pytest.mark.parametrize("name", addition.MODELS)
def test_addition_models(name):
    m = addition.build(name)
    n = count_params(m)
    assert abs(n - 400_000) / 400_000 < 0.01, n
    out = m(torch.rand(5, 2, 42, 42))
    assert out.shape == (5, 19)
    if name.endswith("st-fcn"):
        assert len(m.sts) == (2 if name.startswith("2x") else 1)
        ys = m.transformed(torch.rand(2, 2, 42, 42))
        assert all(y.shape == (2, 2, 42, 42) for y in ys)


def test_addition_budgets_equal_and_widths():
    ms = {k: addition.build(k) for k in addition.MODELS}
    counts = [count_params(m) for m in ms.values()]
    assert max(counts) - min(counts) < 0.01 * 400_000
    assert ms["cnn"].width == 84  # the 84-filter CNN of a 400k budget
    # 2xST-FCN: two 32-32-32 localisation nets, the FCN on 4 x 21 x 21 (average-pooled)
    assert ms["2xst-fcn"].body[1].in_features == 4 * 21 * 21
    assert ms["st-fcn"].body[1].in_features == 2 * 21 * 21


def test_two_transformers_concatenate_in_order():
    m = addition.build("2xst-fcn")
    x = torch.rand(2, 2, 42, 42)
    # untrained: each ST is the identity, so the classifier sees [x, x] pooled
    seen = {}
    m.body.register_forward_pre_hook(lambda mod, inp: seen.setdefault("x", inp[0]))
    m(x)
    pooled = nn.functional.avg_pool2d(x, 2)
    torch.testing.assert_close(seen["x"], torch.cat([pooled, pooled], 1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", mnist.ARCHS)
@pytest.mark.parametrize("size,pool", [(28, False), (42, True), (60, True)])
def test_distorted_mnist_models(arch, size, pool):
    m = mnist.build(arch, in_size=size, st_pool=pool, transform="affine")
    assert abs(count_params(m) - 400_000) / 400_000 < 0.01
    assert m(torch.rand(2, 1, size, size)).shape == (2, 10)


def test_st_cnn_localisation_net_shape():
    m = mnist.build("st-cnn", in_size=60, st_pool=True)
    loc = m.sts[0].loc_net
    convs = [l for l in loc if isinstance(l, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [20, 20] and all(c.kernel_size == (5, 5) for c in convs)
    assert isinstance(loc[0], nn.AvgPool2d)  # 2x downsampled input
    assert loc[-2].out_features == 20


def test_verbose_prints_count(capsys):
    addition.build("fcn", verbose=True)
    assert "parameters" in capsys.readouterr().out


def test_he_init_keeps_identity_regressors_and_standardize_is_parameter_free():
    m = addition.build("2xst-fcn", init="he", standardize=(0.06, 0.2))
    assert abs(count_params(m) - 400_000) / 400_000 < 0.01
    for st in m.sts:
        assert torch.count_nonzero(st.regressor.weight) == 0 and torch.count_nonzero(st.regressor.bias) == 0
    assert isinstance(m.body[0], mnist.Standardize) and isinstance(m.sts[0].loc_net[0], mnist.Standardize)
    x = torch.rand(2, 2, 42, 42)
    assert torch.equal(m.sts[1](x)[0], m.sts[1](x)[0])
    with pytest.raises(ValueError):
        addition.build("fcn", init="xavier")


def test_spatial_transformer_keeps_theta_precision():
    """A bf16 input must not round the localiser's fp32 theta to bf16 (~0.4 px at 224 px)."""
    torch.manual_seed(0)

    class FloatLoc(nn.Module):  # a localiser kept in fp32 for a bf16 trunk
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 16 * 16, 8)

        def forward(self, x):
            return self.fc(x.float().flatten(1))

    st = stn_triton.SpatialTransformer(FloatLoc(), "affine", (16, 16), loc_features=8)
    with torch.no_grad():
        st.regressor.bias.copy_(torch.tensor([0.1234567, -0.0731, 0.0412345, 0.0217, -0.1029, 0.0555]))
    x = torch.rand(2, 3, 16, 16).to(torch.bfloat16)
    y, theta = st(x.float())  # theta as the localiser gives it (fp32)
    y16, theta16 = st(x)
    assert theta16.dtype == torch.float32 == theta.dtype
    torch.testing.assert_close(y16, stn_triton.warp(x, theta), rtol=0, atol=0)
    assert not torch.equal(y16, stn_triton.warp(x, theta.to(torch.bfloat16)))


def test_spatial_transformer_fill_value_learned():
    loc = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6 * 6, 8))
    fill = nn.Parameter(torch.tensor([0.25, -0.5]))
    st = stn_triton.SpatialTransformer(loc, "attention", (5, 5), padding_mode="fill", fill_value=fill)
    with torch.no_grad():
        st.regressor.bias.copy_(torch.tensor([0.5, 0.6, 0.0]))  # zoom out, shifted: part of the output is outside
    x = torch.rand(3, 2, 6, 6)
    y, theta = st(x)
    ref = stn_triton.warp(x, theta, (5, 5), padding_mode="fill", fill_value=fill.detach())
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert fill.grad is not None and (fill.grad > 0).all()
    assert "fill_value" in dict(st.named_parameters())
    with pytest.raises(ValueError, match="fill_value"):
        stn_triton.SpatialTransformer(loc, "affine", fill_value=0.5)
