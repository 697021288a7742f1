"""The max_pool2d op (F.max_pool2d with our autograd), its input gradient and the gather that is
that gradient's backward, against PyTorch's own max-pooling autograd, first and second order."""

import itertools
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA_SKIP_REASON, DEVICES

from edlcm_ext import ops
from edlcm_ext.fused.pool import max_pool2d

# input shape, kernel, stride, padding, dilation, ceil_mode: small_cnn's pool (2, ceil_mode on odd
# sizes), ResNet-style 3/2/1, and dilation.
CONFIGS = [
    ((2, 3, 7, 6), (2, 2), (2, 2), (0, 0), (1, 1), True),
    ((2, 4, 8, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((1, 2, 9, 7), (2, 3), (1, 2), (1, 0), (2, 1), False),
]


def sample_inputs(device, dtype=torch.float64):
    """(input, kernel_size, stride, padding, dilation, ceil_mode) in both layouts."""
    for (shape, *pool_args), layout in itertools.product(CONFIGS, (torch.contiguous_format, torch.channels_last)):
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=layout).requires_grad_(True)
        yield (x, *pool_args)


def first_and_second_order(pool, x, *pool_args, seed=1):
    generator = torch.Generator(device=x.device).manual_seed(seed)
    out = pool(x, *pool_args)
    # drawn in float64 and cast, so float32 and float64 runs see the same numbers
    grad_out = (
        torch.randn(out.shape, generator=generator, device=x.device, dtype=torch.float64)
        .to(x.dtype)
        .requires_grad_(True)
    )
    (grad_input,) = torch.autograd.grad(out, x, grad_out, create_graph=True)
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float64).to(x.dtype)
    (grad_grad_out,) = torch.autograd.grad((grad_input * v).sum(), grad_out)
    return out, grad_input, grad_grad_out


@pytest.mark.parametrize("device", DEVICES)
def test_matches_pytorch_to_second_order_in_both_layouts(device):
    for x, *pool_args in sample_inputs(device):
        ours = first_and_second_order(max_pool2d, x, *pool_args)
        theirs = first_and_second_order(F.max_pool2d, x, *pool_args)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)  # selections and sums of the same values
        if x.is_contiguous(memory_format=torch.channels_last):
            assert all(t.is_contiguous(memory_format=torch.channels_last) for t in ours)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for x, *pool_args in sample_inputs(device):
        torch.library.opcheck(
            torch.ops.edlcm_ext.max_pool2d.default, (x, *[list(a) for a in pool_args[:4]], pool_args[4])
        )
        out, indices = torch.ops.aten.max_pool2d_with_indices.default(x.detach(), *pool_args)
        grad_out = torch.randn_like(out).requires_grad_(True)
        torch.library.opcheck(
            torch.ops.edlcm_ext.max_pool2d_input_grad.default,
            (grad_out, x.detach(), indices, *[list(a) for a in pool_args[:4]], pool_args[4]),
        )
        torch.library.opcheck(torch.ops.edlcm_ext.max_pool2d_gather.default, (torch.randn_like(x.detach()), indices))


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    for x, *pool_args in sample_inputs(device):
        assert torch.autograd.gradcheck(lambda t: max_pool2d(t, *pool_args), (x,))
        assert torch.autograd.gradgradcheck(lambda t: max_pool2d(t, *pool_args), (x,))


def test_gather_by_hand():
    values = torch.arange(12.0).view(1, 1, 3, 4)  # value = flat position
    indices = torch.tensor([[[[0, 11], [5, 6]]]])
    torch.testing.assert_close(ops.max_pool2d_gather(values, indices), torch.tensor([[[[0.0, 11.0], [5.0, 6.0]]]]))
    with pytest.raises(RuntimeError, match="outside the 12-element plane"):
        ops.max_pool2d_gather(values, indices + 1)
    with pytest.raises(RuntimeError, match="indices must be int64"):
        ops.max_pool2d_gather(values, indices.int())


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)
def test_cuda_gather_asserts_on_an_index_outside_the_plane():
    """The CUDA kernel's form of the CPU check above: a device-side assert. That assert leaves the
    process's CUDA context unusable, so the call runs in a child process, after an in-range call
    that must succeed there (so the failure is the index's, not the setup's)."""
    child = (
        "import torch\n"
        "from edlcm_ext import ops\n"
        "values = torch.arange(12.0, device='cuda').view(1, 1, 3, 4)\n"
        "print(ops.max_pool2d_gather(values, torch.tensor([[[[11]]]], device='cuda')).item(), flush=True)\n"
        "ops.max_pool2d_gather(values, torch.tensor([[[[12]]]], device='cuda'))\n"
        "torch.cuda.synchronize()\n"
    )
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "11.0", result.stderr
    assert result.returncode != 0 and "device-side assert" in result.stderr, result.stderr


def test_third_order_raises_clear_error():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    (grad_input,) = torch.autograd.grad(max_pool2d(x, 2), x, grad_out, create_graph=True)
    (second,) = torch.autograd.grad(grad_input.pow(2).sum(), grad_out, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward of max_pool2d_input_grad is not supported"):
        second.sum().backward()


def test_forms_it_does_not_route_keep_pytorchs_path():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    assert max_pool2d(x, 2, return_indices=True)[0].grad_fn.name() == "MaxPool2DWithIndicesBackward0"
    assert "MaxPool2dFunction" not in max_pool2d(x[0], 2).grad_fn.name()  # unbatched
    assert "MaxPool2dFunction" not in max_pool2d(x.bfloat16(), 2).grad_fn.name()
    assert "MaxPool2dFunction" in max_pool2d(x, 2).grad_fn.name()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_at_training_sizes(device, channels_last):
    """small_cnn's first pool (batch 64, 16 channels, 32x32): a gather copies values, so float32
    results equal the float64 ones rounded to float32."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(64, 16, 32, 32, device=device, dtype=torch.float64).contiguous(memory_format=layout)
    ours = [
        t.double()
        for t in first_and_second_order(
            max_pool2d, x.float().requires_grad_(True), (2, 2), (2, 2), (0, 0), (1, 1), True
        )
    ]
    exact = first_and_second_order(F.max_pool2d, x.requires_grad_(True), (2, 2), (2, 2), (0, 0), (1, 1), True)
    for a, b in zip(ours, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
