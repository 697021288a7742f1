"""The fused BatchNorm backward / double backward against PyTorch's own BatchNorm."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES

from edlcm_ext import ops
from edlcm_ext.fused.batchnorm import batch_norm

LAYOUTS = [
    ((5, 3), torch.contiguous_format),
    ((4, 2, 7), torch.contiguous_format),
    ((3, 4, 5, 6), torch.contiguous_format),
    ((3, 4, 5, 6), torch.channels_last),
    ((2, 3, 2, 3, 4), torch.contiguous_format),
    ((2, 3, 2, 3, 4), torch.channels_last_3d),
]


def sample_inputs(device, requires_grad, dtype=torch.float64):
    """(input, weight, bias, running_mean, running_var, training) covering shapes, memory layouts
    (channels_last runs its own kernels) and modes."""
    for (shape, layout), affine, training in itertools.product(LAYOUTS, (True, False), (True, False)):
        channels = shape[1]
        x = (torch.randn(shape, device=device, dtype=dtype) * 2 + 0.5).contiguous(memory_format=layout)
        x.requires_grad_(requires_grad)
        weight = bias = None
        if affine:
            weight = (torch.rand(channels, device=device, dtype=dtype) + 0.5).requires_grad_(requires_grad)
            bias = torch.randn(channels, device=device, dtype=dtype).requires_grad_(requires_grad)
        running_mean = torch.randn(channels, device=device, dtype=dtype)
        running_var = torch.rand(channels, device=device, dtype=dtype) + 0.5
        yield x, weight, bias, running_mean, running_var, training


def first_and_second_order(bn, x, weight, bias, running_mean, running_var, training, seed=1):
    """Output, first-order grads, and grads of <grad_input, v> (the double backward EDLCM needs)."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    out = bn(x, running_mean, running_var, weight, bias, training, 0.1, 1e-5)
    grad_out = torch.randn(out.shape, generator=generator, device=x.device, dtype=x.dtype).requires_grad_(True)
    inputs = [t for t in (x, weight, bias) if t is not None]
    first = torch.autograd.grad(out, inputs, grad_out, create_graph=True)
    v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    # weighted sum of all first-order grads, so the weight/bias double-backward terms are exercised
    scalar = (first[0] * v).sum() + sum((g * (i + 2)).sum() for i, g in enumerate(first[1:]))
    second = torch.autograd.grad(scalar, inputs + [grad_out], allow_unused=True)
    return out, first, second


@pytest.mark.parametrize("device", DEVICES)
def test_matches_pytorch_batch_norm_to_second_order(device):
    for x, weight, bias, running_mean, running_var, training in sample_inputs(device, requires_grad=True):
        ours_stats = (running_mean.clone(), running_var.clone())
        ref_stats = (running_mean.clone(), running_var.clone())
        ours = first_and_second_order(batch_norm, x, weight, bias, *ours_stats, training)
        ref = first_and_second_order(F.batch_norm, x, weight, bias, *ref_stats, training)
        for a, b in zip(itertools.chain([ours[0]], *ours[1:]), itertools.chain([ref[0]], *ref[1:]), strict=True):
            if b is None:
                assert a is None or torch.count_nonzero(a) == 0
            else:
                torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
        # On CUDA F.batch_norm may run cuDNN, whose running-statistic update rounds differently from
        # native_batch_norm (ours): equal to float64 round-off, not bit for bit.
        torch.testing.assert_close(ours_stats, ref_stats, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device):
    for x, weight, bias, running_mean, running_var, training in sample_inputs(device, requires_grad=True):

        def fn(x, *params):
            w, b = params if params else (None, None)
            # momentum 0: gradcheck's repeated calls must not drift the running statistics
            return batch_norm(x, running_mean, running_var, w, b, training, 0.0, 1e-5)

        args = (x,) + ((weight, bias) if weight is not None else ())
        assert torch.autograd.gradcheck(fn, args)
        assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for x, weight, _bias, running_mean, running_var, training in sample_inputs(device, requires_grad=False):
        if training:
            mean, invstd = (
                x.transpose(0, 1).flatten(1).mean(1),
                x.transpose(0, 1).flatten(1).var(1, correction=0).add(1e-5).rsqrt(),
            )
        else:
            mean, invstd = running_mean, (running_var + 1e-5).rsqrt()
        grad_out = torch.randn_like(x)  # in x's layout
        leaf = lambda t: None if t is None else t.detach().requires_grad_(True)  # noqa: E731
        args = (leaf(grad_out), leaf(x), leaf(weight), mean, invstd, training)
        torch.library.opcheck(torch.ops.edlcm_ext.batch_norm_backward.default, args)
        channels = x.shape[1]
        double_args = (
            torch.randn_like(x),
            torch.randn(channels, dtype=x.dtype, device=device),
            torch.randn(channels, dtype=x.dtype, device=device),
            grad_out,
            x,
            weight,
            mean,
            invstd,
            training,
        )
        torch.library.opcheck(torch.ops.edlcm_ext._batch_norm_backward_backward.default, double_args)


@pytest.mark.parametrize("device", DEVICES)
def test_outputs_keep_the_channels_last_layout(device):
    """Full-size outputs come back in input's layout, so a channels_last network stays in it (a
    contiguous result would make every later layer convert)."""
    x = torch.randn(4, 3, 5, 6, device=device, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    stats = torch.zeros(3, device=device, dtype=x.dtype), torch.ones(3, device=device, dtype=x.dtype)
    grad_input, _, _ = ops.batch_norm_backward(torch.randn_like(x), x, None, *stats, True)
    assert grad_input.is_contiguous(memory_format=torch.channels_last) and not grad_input.is_contiguous()
    double = torch.ops.edlcm_ext._batch_norm_backward_backward.default(
        torch.randn_like(x), stats[0], stats[0], torch.randn_like(x), x, None, *stats, True
    )
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in double[:2])


def test_third_order_raises_clear_error():
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    out = batch_norm(x, None, None, training=True)
    (grad_x,) = torch.autograd.grad(out.pow(3).sum(), x, create_graph=True)
    (grad_grad_x,) = torch.autograd.grad(grad_x.pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward of batch_norm_backward is not supported"):
        grad_grad_x.sum().backward()


def test_eval_mode_requires_running_statistics():
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        batch_norm(torch.randn(4, 3), None, None, training=False)


def test_bad_shapes_are_rejected_by_the_kernel():
    """The whole message, numbers included: an extension holding its own copy of libstdc++ cut
    these messages at the first number (and crashed on a GPU machine), see setup.py."""
    x = torch.randn(4, 3, 5)
    with pytest.raises(RuntimeError, match="(?m)mean must have shape \\(C,\\) = \\(3\\), got \\[2\\]$"):
        ops.batch_norm_backward(x, x, None, torch.zeros(2), torch.ones(3), True)
    with pytest.raises(RuntimeError, match="(?m)grad_out must have input's shape \\[4, 3, 5\\], got \\[2, 3, 5\\]$"):
        ops.batch_norm_backward(x[:2], x, None, torch.zeros(3), torch.ones(3), True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_float32_at_training_sizes_against_float64(device, channels_last, training):
    """64x8x24x24: 36,864 values per channel, 72 times a CUDA block of 512 threads and above the CPU
    grain, so every reduction loop and parallel path runs; float32 against float64 ground truth.
    Tolerance: a float32 sum of n terms errs by ~sqrt(n)*2^-24 relative (pairwise/blocked sums do
    better), ~1e-5 here, and outputs are O(1): 2e-4 leaves margin while a wrong term (O(1e-2) or
    more) still fails."""
    shape, channels = (64, 8, 24, 24), 8
    generator = torch.Generator().manual_seed(0)
    x64 = (torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + 0.5).to(device)
    weight64 = (torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5).to(device)
    bias64 = torch.randn(channels, generator=generator, dtype=torch.float64).to(device)
    stats64 = (
        torch.randn(channels, generator=generator, dtype=torch.float64).to(device),
        (torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5).to(device),
    )
    format = torch.channels_last if channels_last else torch.contiguous_format

    grad_out64 = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)
    v64 = torch.randn(shape, generator=generator, dtype=torch.float64).to(device)

    def run(bn, dtype):
        cast = lambda t: t.to(dtype).contiguous(memory_format=format) if t.dim() == 4 else t.to(dtype)  # noqa: E731
        x, w, b = (cast(t).requires_grad_(True) for t in (x64, weight64, bias64))
        grad_out, stats = cast(grad_out64).requires_grad_(True), tuple(cast(t) for t in stats64)
        out = bn(x, *stats, w, b, training, 0.1, 1e-5)
        first = torch.autograd.grad(out, (x, w, b), grad_out, create_graph=True)
        scalar = (first[0] * cast(v64)).sum() + 2 * first[1].sum() + 3 * first[2].sum()
        second = torch.autograd.grad(scalar, (x, w, b, grad_out), allow_unused=True)
        return [t.double() for t in itertools.chain([out], first, second, stats) if t is not None]

    for ours, truth in zip(run(batch_norm, torch.float32), run(F.batch_norm, torch.float64), strict=True):
        scale = truth.abs().max().item()
        torch.testing.assert_close(ours, truth, rtol=2e-4, atol=2e-4 * max(scale, 1.0))


@pytest.mark.parametrize("device", DEVICES)
def test_pytorch_batch_norm_errors_and_empty_batches_are_kept(device):
    running = (torch.zeros(3, device=device), torch.ones(3, device=device))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        batch_norm(torch.randn(1, 3, 1, 1, device=device), *running, training=True)
    empty = batch_norm(torch.zeros(0, 3, 4, 4, device=device), *running, training=True)
    assert empty.shape == (0, 3, 4, 4)


def test_low_precision_inputs_take_pytorchs_path_with_its_values():
    """bf16 (what autocast hands BatchNorm) has no fused kernel: PyTorch's own BatchNorm runs."""
    x = torch.randn(4, 3, 5, 5).bfloat16().requires_grad_(True)
    stats = torch.zeros(3), torch.ones(3)
    ours = batch_norm(x, *stats, training=True)
    assert ours.grad_fn.name() != "_FusedBatchNormFunctionBackward"
    torch.testing.assert_close(ours, F.batch_norm(x, torch.zeros(3), torch.ones(3), training=True), rtol=0, atol=0)


def test_eval_mode_gradients_use_the_statistics_of_the_forward():
    """In eval mode the normalisation uses the running statistics; if they change in place between
    forward and backward (another forward in train mode), the backward must still use the old ones."""
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    running_mean, running_var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    expected = torch.autograd.grad(F.batch_norm(x, running_mean.clone(), running_var.clone()).pow(2).sum(), x)[0]
    out = batch_norm(x, running_mean, running_var, training=False)
    running_mean.add_(3.0)
    running_var.mul_(4.0)
    torch.testing.assert_close(torch.autograd.grad(out.pow(2).sum(), x)[0], expected, rtol=1e-12, atol=1e-12)
