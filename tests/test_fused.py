"""The one routing switch (fused_layers) and module conversion (convert_to_fused) for BatchNorm and
Conv2d: same values, input gradients and double-backward parameter gradients as PyTorch's layers."""

import torch
from conftest import small_bn_cnn

from edlcm_ext.fused import FusedBatchNorm2d, FusedConv2d, convert_to_fused, fused_layers


def test_fused_layers_routes_batchnorm_and_conv2d_and_nothing_outside_the_block():
    bn, conv = torch.nn.BatchNorm2d(3), torch.nn.Conv2d(3, 2, 3)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    assert bn(x).grad_fn.name() == "NativeBatchNormBackward0"
    assert conv(x).grad_fn.name() == "ConvolutionBackward0"
    with fused_layers():
        assert bn(x).grad_fn.name() == "_FusedBatchNormFunctionBackward"
        assert "Conv2dFunction" in conv(x).grad_fn.name()
    with fused_layers(enabled=False):
        assert conv(x).grad_fn.name() == "ConvolutionBackward0"


def _double_backward(model, x):
    """Output, input gradient (create_graph) and parameter gradients of |input gradient|^2: the
    derivative structure of EDLCM's L_r."""
    out = model(x)
    (input_grad,) = torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    return out, input_grad, torch.autograd.grad(input_grad.pow(2).sum(), list(model.parameters()))


def test_convert_keeps_state_and_behaviour():
    torch.manual_seed(0)
    plain = small_bn_cnn().double()
    converted = convert_to_fused(small_bn_cnn().double())
    converted.load_state_dict(plain.state_dict())
    assert isinstance(converted[0], FusedConv2d) and isinstance(converted[0], torch.nn.Conv2d)
    assert isinstance(converted[1], FusedBatchNorm2d) and isinstance(converted[1], torch.nn.BatchNorm2d)
    assert list(converted.state_dict()) == list(plain.state_dict())
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out_p, grad_p, params_p = _double_backward(plain.train(), x)
    out_c, grad_c, params_c = _double_backward(converted.train(), x)
    torch.testing.assert_close(out_c, out_p)
    torch.testing.assert_close(grad_c, grad_p)
    for a, b in zip(params_c, params_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(plain.state_dict(), converted.state_dict(), rtol=0, atol=0)
    assert "Conv2dFunction" in converted[0](x).grad_fn.name()
    assert converted[1](converted[0](x)).grad_fn.name() == "_FusedBatchNormFunctionBackward"


def test_routed_model_in_channels_last_matches_contiguous_pytorch():
    torch.manual_seed(1)
    model = small_bn_cnn().double()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    out_p, grad_p, params_p = _double_backward(model, x)
    model_cl = model.to(memory_format=torch.channels_last)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    with fused_layers():
        out_c, grad_c, params_c = _double_backward(model_cl, x_cl)
    torch.testing.assert_close(out_c, out_p)
    torch.testing.assert_close(grad_c, grad_p)
    for a, b in zip(params_c, params_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
