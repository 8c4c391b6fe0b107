"""The xresnet family: fastai 2.8.12's parameter counts, init, shapes, memory formats, options, shortcuts."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

from imagenette_sota.models import (
    ConvBN,
    MaxBlurPool2d,
    ResBlock,
    SimpleSelfAttention,
    SqueezeExcite,
    XResNet,
    blur_max_pools,
    fold_batchnorm,
    xresnet18,
    xresnet34,
    xresnet50,
    xresnet101,
    xresnet152,
    xresnext50,
    xse_resnext50,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Run this module single-threaded (tiny tensors; on shared cores OpenMP's barriers stall), then clean up."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    _cached.cache_clear()  # free the shared models (a few hundred MB) for the rest of the session


def _n_params(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters())


def _meta(builder: Callable[..., XResNet], *args: object, **kwargs: object) -> XResNet:
    """Build a model on the meta device (no memory; the first call pays a one-time setup)."""
    with torch.device("meta"):
        return builder(*args, **kwargs)


@functools.cache
def _cached(builder: Callable[..., XResNet], n_out: int = 10, **kwargs: object) -> XResNet:
    """One shared instance per configuration, for read-only checks (building xresnet50 is slow)."""
    return builder(n_out, **kwargs).eval()


def _fresh(builder: Callable[..., XResNet], n_out: int = 10, **kwargs: object) -> XResNet:
    """A private copy of the shared instance, for tests that modify the model."""
    return copy.deepcopy(_cached(builder, n_out, **kwargs))


def _blocks(model: XResNet) -> list[ResBlock]:
    """Every residual block, in order."""
    return [m for m in model.modules() if isinstance(m, ResBlock)]


def _randomise_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial affine params and running stats, so zero-init branches contribute."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean):
                    t.copy_(torch.rand(t.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# Counts from fastai 2.8.12 (xresnetNN(n_out=...)); the sa/widen rows were measured on fastai 2.8.12 too.
@pytest.mark.parametrize(
    ("builder", "n_out", "kwargs", "expected"),
    [
        (xresnet18, 10, {}, 11_200_874),
        (xresnet34, 10, {}, 21_309_034),
        (xresnet50, 10, {}, 23_547_754),
        (xresnet101, 10, {}, 42_539_882),
        (xresnet152, 10, {}, 58_183_530),
        (xresnet50, 1000, {}, 25_576_264),
        (xresnet18, 10, {"sa": True}, 11_204_971),
        (xresnet50, 10, {"sa": True}, 23_613_291),
        (xresnet50, 10, {"widen": 1.5}, 52_876_010),
        (xresnext50, 10, {}, 23_019_626),
        (xse_resnext50, 10, {}, 25_550_618),
    ],
)
def test_parameter_counts_match_fastai(
    builder: Callable[..., XResNet], n_out: int, kwargs: dict[str, object], expected: int
) -> None:
    assert _n_params(_meta(builder, n_out, **kwargs)) == expected


def test_default_n_out_is_1000() -> None:
    model = _meta(xresnet50)
    assert isinstance(model[-1], nn.Linear)
    assert (model[-1].in_features, model[-1].out_features) == (2048, 1000)


@pytest.mark.parametrize(("builder", "n_blocks", "expansion"), [(xresnet18, 8, 1), (xresnet50, 16, 4)])
def test_batchnorm_init_zeroes_only_the_last_bn_of_each_branch(
    builder: Callable[..., XResNet], n_blocks: int, expansion: int
) -> None:
    model = _cached(builder)
    blocks = _blocks(model)
    assert len(blocks) == n_blocks
    last_bns = {id(b.convpath[-1][1]) for b in blocks}
    for block in blocks:
        assert len(block.convpath) == (2 if expansion == 1 else 3)
        bn = block.convpath[-1][1]
        assert isinstance(bn, nn.BatchNorm2d)
        assert torch.all(bn.weight == 0)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    others = [m for m in bns if id(m) not in last_bns]
    # stem 3 + per block (2 or 3 branch BNs) + one BN per projection shortcut (4 for both nets)
    assert len(bns) == 3 + n_blocks * (2 if expansion == 1 else 3) + (3 if expansion == 1 else 4)
    assert len(others) == len(bns) - n_blocks
    assert all(torch.all(m.weight == 1) for m in others)
    assert all(torch.all(m.bias == 0) for m in bns)


def test_conv_and_linear_biases_and_kaiming_normal_init() -> None:
    model = _cached(xresnet50)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 + 16 * 3 + 4
    assert all(c.bias is None for c in convs)  # BatchNorm follows every conv
    head = model[-1]
    assert isinstance(head, nn.Linear)
    assert torch.all(head.bias == 0)
    # kaiming_normal_(fan_in, gain sqrt(2)): std sqrt(2 / fan_in); torch's default init would be ~2.4x smaller.
    big = [c for c in convs if c.weight.numel() >= 100_000] + [head]
    assert len(big) > 10
    for m in big:
        w = m.weight.detach()
        fan_in = w[0].numel()
        expected = math.sqrt(2 / fan_in)
        assert w.std().item() == pytest.approx(expected, rel=0.05)
        assert abs(w.mean().item()) < 0.05 * expected
        # normal, not uniform: about 4.6% of a normal sample lies beyond 2 std, none of a uniform one
        assert (w.abs() > 2 * expected).float().mean().item() == pytest.approx(0.0455, abs=0.01)


# The leaderboard entries' network: SE-ResNeXt, MaxPool shortcuts, every max pool anti-aliased.
_entries = functools.partial(xse_resnext50, act=nn.Mish, shortcut_pool="max", max_blur=True)


@pytest.mark.parametrize("builder", [xresnet18, xresnet50, _entries])
@pytest.mark.parametrize("size", [32, 64, 97, 128])  # 97: odd maps at every stage's downsampling
def test_output_shape(builder: Callable[..., XResNet], size: int) -> None:
    model = _cached(builder, 7)
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("builder", [xresnet18, xresnet50, _entries])
def test_channels_last_matches_contiguous(builder: Callable[..., XResNet]) -> None:
    torch.manual_seed(0)
    model = _fresh(builder, sa=True)
    _randomise_bn(model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, SimpleSelfAttention):
                m.gamma.fill_(0.01)
        x = torch.randn(2, 3, 72, 72)
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.contiguous(memory_format=torch.channels_last))
    assert ref.abs().max() > 0.1  # the comparison is not between two near-zero outputs
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_shortcuts_follow_resnet_d() -> None:
    model = _cached(xresnet18)
    block = model[5][0]  # first block of stage 2
    assert isinstance(block, ResBlock)
    pool, proj = block.idpath
    assert isinstance(pool, nn.AvgPool2d)
    assert (pool.kernel_size, pool.stride, pool.ceil_mode) == (2, 2, True)
    assert isinstance(proj, ConvBN)
    assert len(proj) == 2  # conv + BN, no activation
    conv, bn = proj
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (64, 128, (1, 1), (1, 1))
    assert torch.all(bn.weight == 1)
    # the stride sits on the first 3x3 conv of a basic block
    assert [cb[0].stride for cb in block.convpath] == [(2, 2), (1, 1)]
    # identity when shapes match, including the whole first stage of xresnet18
    assert all(len(b.idpath) == 0 for b in [*model[4], *[s[i] for s in model[5:8] for i in range(1, len(s))]])


def test_bottleneck_stride_and_projection() -> None:
    model = _cached(xresnet50)
    first = model[4][0]  # stage 1: 64 -> 256 channels at stride 1, a 1x1 projection without pooling
    assert len(first.idpath) == 1 and isinstance(first.idpath[0], ConvBN)
    assert first.idpath[0][0].in_channels == 64 and first.idpath[0][0].out_channels == 256
    block = model[5][0]
    assert [cb[0].stride for cb in block.convpath] == [(1, 1), (2, 2), (1, 1)]  # stride on the middle conv
    assert [cb[0].kernel_size for cb in block.convpath] == [(1, 1), (3, 3), (1, 1)]
    assert isinstance(block.idpath[0], nn.AvgPool2d) and isinstance(block.idpath[1], ConvBN)
    assert block.idpath[1][0].in_channels == 256 and block.idpath[1][0].out_channels == 512


def test_stem() -> None:
    model = xresnet18(10, c_in=1)
    convs = [model[i][0] for i in range(3)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 32), (32, 64)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    pool = model[3]
    assert isinstance(pool, nn.MaxPool2d)
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 40, 40)).shape == (1, 10)


@pytest.mark.parametrize(
    ("act", "builder", "n_acts"), [(nn.Mish, xresnet18, 3 + 8 * 2), (nn.SiLU, xresnet50, 3 + 16 * 3)]
)
def test_activation_class_is_used_everywhere(
    act: type[nn.Module], builder: Callable[..., XResNet], n_acts: int
) -> None:
    model = _fresh(builder, act=act)
    acts = [m for m in model.modules() if isinstance(m, act)]
    assert len(acts) == n_acts
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    calls: list[int] = []
    for m in acts:
        m.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == n_acts


def test_default_activation_is_relu() -> None:
    model = _meta(xresnet18, 10)
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3 + 8 * 2


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_head_dropout(p: float) -> None:
    model = _meta(xresnet34, 10, p=p)
    assert [type(m) for m in model[-4:]] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear]
    assert model[-2].p == p
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 1


@pytest.mark.parametrize(("builder", "n_in"), [(xresnet18, 64), (xresnet50, 256)])
def test_self_attention_placement_and_parameters(builder: Callable[..., XResNet], n_in: int) -> None:
    plain, with_sa = _meta(builder, 10), _meta(builder, 10, sa=True)
    assert _n_params(with_sa) - _n_params(plain) == n_in * n_in + 1  # 1x1 conv1d without bias, plus gamma
    sas = [m for m in with_sa.modules() if isinstance(m, SimpleSelfAttention)]
    assert len(sas) == 1
    # fastai: the last block of stage len(layers) - 4, which is the FIRST stage of these 4-stage nets
    assert with_sa[4][-1].convpath[-1] is sas[0]
    assert [p.shape for p in sas[0].parameters()] == [torch.Size([1]), torch.Size([n_in, n_in, 1])]


def test_self_attention_forward() -> None:
    torch.manual_seed(0)
    sa = SimpleSelfAttention(8).eval()
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        assert torch.equal(sa(x), x)  # gamma starts at 0
        sa.gamma.fill_(0.5)
        flat = x.flatten(2)
        w = sa.conv.weight.squeeze(-1)  # the spectral-normalised weight
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=1e-3)
        expected = (0.5 * (flat @ flat.transpose(1, 2)) @ (w @ flat) + flat).view_as(x)
        torch.testing.assert_close(sa(x), expected, atol=1e-4, rtol=1e-4)


def test_widen_scales_block_widths() -> None:
    model = _meta(xresnet18, 10, widen=2.0)
    assert model[-1].in_features == 1024
    assert [s[0].convpath[0][0].out_channels for s in model[4:8]] == [128, 256, 512, 1024]


def test_slicing_gives_the_body_as_a_plain_sequential() -> None:
    model = _cached(xresnet18)
    body = model[:-4]
    assert type(body) is nn.Sequential
    assert len(body) == 8
    with torch.no_grad():
        assert body(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    assert isinstance(model[-1], nn.Linear)


def test_constructor_as_backbone_callable() -> None:
    backbone: Callable[[int], nn.Module] = xresnet18
    model = backbone(10).eval()
    assert isinstance(model, XResNet)
    with torch.no_grad():
        assert model(torch.randn(3, 3, 64, 64)).shape == (3, 10)


def test_compiles_without_graph_breaks() -> None:
    model = _cached(xresnet18, sa=True)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("name", ["xresnet18", "xresnet34", "xresnet50", "xresnet101", "xresnet152"])
def test_fastai_state_dict_loads_and_gives_the_same_logits(name: str) -> None:
    """Same state-dict keys and shapes as fastai's xresnet, and the same outputs from the same weights."""
    import fastai.vision.models.xresnet as fx  # the test peer: `make test` installs it

    theirs, ours = getattr(fx, name)(n_out=10), globals()[name](10)
    _randomise_bn(theirs)
    their_sd = theirs.state_dict()
    assert {k: v.shape for k, v in their_sd.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(their_sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_batchnorm_is_the_same_function_without_batchnorm(channels_last: bool) -> None:
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = xresnet18(10).to(memory_format=layout)
    for _ in range(3):  # running statistics of real batches, and affine parameters away from their init
        model(torch.randn(8, 3, 32, 32))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    model.eval()
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == norms > 0  # the original is untouched
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=layout) for c in convs)
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=layout)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model.train())


def _fastai_resnext(name: str, **kwargs: object) -> nn.Module:
    """fastai's xse_resnext50 / xresnext50 with Mish, its MaxPool shortcuts (the leaderboard's --pool MaxPool)."""
    import fastai.vision.models.xresnet as fx
    from fastai.layers import MaxPool

    return getattr(fx, name)(n_out=10, act_cls=nn.Mish, pool=MaxPool, **kwargs)


@pytest.mark.parametrize(("builder", "max_blur"), [(xse_resnext50, False), (xresnext50, False), (xse_resnext50, True)])
def test_resnext_matches_fastai_state_dict_and_logits(builder: Callable[..., XResNet], max_blur: bool) -> None:
    """fastai's ResNeXt / SE-ResNeXt (MaxPool shortcuts, optionally anti-aliased): same keys, shapes and logits."""
    theirs = _fastai_resnext(builder.__name__)
    if max_blur:
        theirs = blur_max_pools(theirs)
    ours = builder(10, act=nn.Mish, shortcut_pool="max", max_blur=max_blur)
    _randomise_bn(theirs)
    their_sd = theirs.state_dict()
    assert {k: v.shape for k, v in their_sd.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(their_sd)
    pools = [m for m in ours.modules() if isinstance(m, (nn.MaxPool2d, MaxBlurPool2d))]
    assert len(pools) == 1 + 3 and all(isinstance(m, MaxBlurPool2d) == max_blur for m in pools)  # stem + 3 stages
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


def test_xse_resnext50_blocks_are_grouped_and_gated() -> None:
    model = _meta(xse_resnext50, 10)
    first = _blocks(model)[0]
    grouped = first.convpath[1][0]
    assert (grouped.in_channels, grouped.out_channels, grouped.groups) == (128, 128, 32)  # 32 groups x 4 per 64
    gate = first.convpath[3]
    assert isinstance(gate, SqueezeExcite)
    assert (gate.layers[1][0].in_channels, gate.layers[1][0].out_channels) == (256, 16)  # 256 // 16, a multiple of 8


def test_max_blur_pool_is_a_max_then_a_binomial_blur() -> None:
    """A single peak: the 2x2 max spreads it over four positions, the [1 2 1]^2 / 16 blur at stride 2 weighs them."""
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 1, 1] = 1.0
    expected = torch.tensor([[9.0, 3.0], [3.0, 1.0]]) / 16
    torch.testing.assert_close(MaxBlurPool2d()(x)[0, 0], expected)
    # A negative map: the max pool, not the zero padding, decides the values the blur weighs.
    torch.testing.assert_close(MaxBlurPool2d()(-x)[0, 0], torch.zeros(2, 2))


@pytest.mark.parametrize("size", [(4, 6), (5, 5), (7, 8), (1, 3)])
def test_max_blur_pool_halves_like_the_pools_it_replaces(size: tuple[int, int]) -> None:
    x = torch.randn(2, 3, *size)
    out = MaxBlurPool2d()(x)
    assert out.shape == nn.MaxPool2d(2, ceil_mode=True)(x).shape == nn.MaxPool2d(3, 2, 1)(x).shape
    assert torch.isfinite(out).all()  # the -inf that pads an odd side never survives the max


def test_resnext_options_compile_without_graph_breaks() -> None:
    model = XResNet(10, (1, 1, 1, 1), 4, groups=32, base_width=4, reduction=16, shortcut_pool="max", max_blur=True)
    compiled = torch.compile(model.eval(), backend="eager", fullgraph=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
