"""The conv2d op (F.conv2d with our autograd) and conv2d_input_grad (its input gradient, whose
backward runs two convolutions), against PyTorch's own convolution autograd, first and second order."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from edlcm_ext import ops
from edlcm_ext.fused.conv import conv2d

# (N, C_in, H, W), (C_out, kH, kW), stride, padding, dilation, groups: odd sizes with stride 2 make
# the transposed convolution need output padding; groups and dilation cover the general case.
CONFIGS = [
    ((2, 3, 7, 6), (4, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 4, 9, 8), (6, 3, 2), (2, 2), (1, 0), (1, 2), 2),
    ((1, 2, 5, 5), (3, 1, 1), (2, 1), (0, 0), (1, 1), 1),
    ((3, 4, 6, 7), (4, 3, 3), (2, 3), (2, 1), (2, 1), 4),
]


def sample_inputs(device, requires_grad, dtype=torch.float64):
    """(grad_out, weight, input_size, stride, padding, dilation, groups), both layouts."""
    for (input_size, (c_out, kh, kw), stride, padding, dilation, groups), channels_last in itertools.product(
        CONFIGS, (False, True)
    ):
        weight = torch.randn(c_out, input_size[1] // groups, kh, kw, device=device, dtype=dtype)
        out_shape = F.conv2d(
            torch.empty(input_size, device=device, dtype=dtype), weight, None, stride, padding, dilation, groups
        ).shape
        grad_out = torch.randn(out_shape, device=device, dtype=dtype)
        if channels_last:
            grad_out, weight = (t.to(memory_format=torch.channels_last) for t in (grad_out, weight))
        yield (
            grad_out.requires_grad_(requires_grad),
            weight.requires_grad_(requires_grad),
            list(input_size),
            list(stride),
            list(padding),
            list(dilation),
            groups,
        )


def pytorch_input_grad(grad_out, weight, input_size, stride, padding, dilation, groups):
    """The input gradient as PyTorch's autograd of F.conv2d computes it (kept differentiable)."""
    x = torch.zeros(input_size, device=weight.device, dtype=weight.dtype, requires_grad=True)
    out = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    return torch.autograd.grad(out, x, grad_out, create_graph=True)[0]


@pytest.mark.parametrize("device", DEVICES)
def test_values_and_double_backward_match_pytorch(device):
    for sample in sample_inputs(device, requires_grad=True):
        grad_out, weight = sample[:2]
        ours, theirs = ops.conv2d_input_grad(*sample), pytorch_input_grad(*sample)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
        v = torch.randn_like(ours)
        second_ours = torch.autograd.grad((ours * v).sum(), (grad_out, weight))
        second_theirs = torch.autograd.grad((theirs * v).sum(), (grad_out, weight))
        for a, b in zip(second_ours, second_theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for sample in sample_inputs(device, requires_grad=True):
        torch.library.opcheck(torch.ops.edlcm_ext.conv2d_input_grad.default, sample)
    for input_size, (c_out, kh, kw), stride, padding, dilation, groups in CONFIGS:
        x = torch.randn(input_size, device=device, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(
            c_out, input_size[1] // groups, kh, kw, device=device, dtype=torch.float64, requires_grad=True
        )
        for bias in (None, torch.randn(c_out, device=device, dtype=torch.float64, requires_grad=True)):
            args = (x, weight, bias, list(stride), list(padding), list(dilation), groups)
            torch.library.opcheck(torch.ops.edlcm_ext.conv2d.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    for grad_out, weight, *conv_args in itertools.islice(sample_inputs(device, requires_grad=True), 0, None, 3):

        def op(g, w):
            return ops.conv2d_input_grad(g, w, *conv_args)

        assert torch.autograd.gradcheck(op, (grad_out, weight))
        assert torch.autograd.gradgradcheck(op, (grad_out, weight))


def test_bad_arguments_are_named():
    weight = torch.randn(4, 3, 3, 3)
    with pytest.raises(RuntimeError, match="grad_out must have shape"):
        ops.conv2d_input_grad(torch.randn(4, 5, 5), weight, [1, 3, 7, 7], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="is not an input that gives grad_out's size"):
        ops.conv2d_input_grad(torch.randn(1, 4, 5, 5), weight, [1, 3, 9, 7], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="shapes disagree"):
        ops.conv2d_input_grad(torch.randn(1, 4, 5, 5), weight, [1, 2, 7, 7], [1, 1], [0, 0], [1, 1], 1)
    with pytest.raises(RuntimeError, match="same dtype and device"):
        ops.conv2d_input_grad(
            torch.randn(1, 4, 5, 5, dtype=torch.float64), weight, [1, 3, 7, 7], [1, 1], [0, 0], [1, 1], 1
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias", [True, False])
def test_routed_conv2d_first_and_second_order_match_f_conv2d(device, bias):
    """Forward, input gradient (create_graph) and the parameter gradient of |input gradient|^2,
    the derivative structure of EDLCM's L_r, for every argument form F.conv2d accepts."""
    for input_size, (c_out, kh, kw), stride, padding, dilation, groups in CONFIGS:
        x = torch.randn(input_size, device=device, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(
            c_out, input_size[1] // groups, kh, kw, device=device, dtype=torch.float64, requires_grad=True
        )
        b = torch.randn(c_out, device=device, dtype=torch.float64, requires_grad=True) if bias else None
        params = [t for t in (weight, b) if t is not None]
        results = []
        for function in (F.conv2d, conv2d):
            out = function(x, weight, b, stride, padding, dilation, groups)
            (input_grad,) = torch.autograd.grad(out.tanh().sum(), x, create_graph=True)
            results.append((out, input_grad, *torch.autograd.grad(input_grad.pow(2).sum(), params)))
        for a, b_ in zip(*results, strict=True):
            torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


def _aten_calls(run) -> list[str]:
    with torch.profiler.profile() as profile:
        run()
    return [event.name for event in profile.events()]


def test_input_gradient_pass_skips_the_weight_gradient():
    """autograd.grad(loss, x) needs no weight gradient, so none is computed (a convolution per layer
    per point saved); a full backward computes it once."""
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    out = conv2d(x, weight, None, 1, 1)
    input_pass = _aten_calls(lambda: torch.autograd.grad(out.pow(2).sum(), x, create_graph=True))
    assert "edlcm_ext::conv2d_input_grad" in input_pass and "aten::convolution_backward" not in input_pass
    full_pass = _aten_calls(lambda: out.pow(2).sum().backward())
    assert full_pass.count("aten::convolution_backward") == 1 and weight.grad is not None


def test_forms_it_does_not_route_keep_pytorchs_path():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    assert conv2d(x, weight, padding="same").grad_fn.name() == "ConvolutionBackward0"
    assert conv2d(x[0], weight).grad_fn.name() == "SqueezeBackward1"  # unbatched: F.conv2d adds and drops the batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv2d(x, weight).grad_fn.name() == "ConvolutionBackward0"
    assert "Conv2dFunction" in conv2d(x, weight).grad_fn.name()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_at_training_sizes_against_float64(device, channels_last):
    """A ResNet-18 stage-2 shape (batch 64, 64 -> 128 channels, 32x32, stride 2) in float32, against
    float64: the op adds no error beyond the convolution's own float32 rounding. TF32, which cuDNN
    uses for float32 convolutions by default on Ampere and newer, is off: with it, this op and
    torch.nn.grad.conv2d_input alike are 2.9e-4 off in norm, 1.7e-3 at worst (H100, 2026-11-26),
    against 2.1e-7 without."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    weight = (torch.randn(128, 64, 3, 3, device=device) * 0.05).to(memory_format=memory_format)
    grad_out = torch.randn(64, 128, 16, 16, device=device).to(memory_format=memory_format)
    args = ([64, 64, 32, 32], [2, 2], [1, 1], [1, 1], 1)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ours = ops.conv2d_input_grad(grad_out, weight, *args)
    exact = ops.conv2d_input_grad(grad_out.double(), weight.double(), *args)
    # each output sums <= 9 * 128 = 1152 products of size ~0.05 * |N(0,1)|: float32 keeps ~1e-6 relative
    torch.testing.assert_close(ours.double(), exact, rtol=1e-4, atol=1e-4)
