"""The fused curvature statistics op (paper eqs 9-10) against its plain-PyTorch reference."""

import pytest
import torch
from conftest import CUDA_SKIP_REASON, DEVICES

import edlcm_ext  # noqa: F401
from edlcm_ext import ops
from edlcm_ext.loss.reference import curvature_statistics

SHAPES = [(2, 1, 1), (2, 5, 7), (3, 4, 300), (4, 3, 33), (1, 6, 10), (5, 2, 1000)]


def sample_inputs(device, requires_grad, dtype=torch.float64):
    for shape in SHAPES:
        yield torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)
    # Non-contiguous input, and a member whose vector is exactly zero (the eps clamp).
    yield torch.randn(40, 3, 4, device=device, dtype=dtype).permute(1, 2, 0).requires_grad_(requires_grad)
    zero_member = torch.randn(3, 4, 16, device=device, dtype=dtype)
    zero_member[1, 2] = 0
    yield zero_member.requires_grad_(requires_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_reference(device, dtype):
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for u in sample_inputs(device, requires_grad=False, dtype=dtype):
        sq_norms, cosines = ops.curvature_stats(u)
        ref_sq, ref_cos = curvature_statistics(u)
        torch.testing.assert_close(sq_norms, ref_sq, **tol)
        torch.testing.assert_close(cosines, ref_cos, **tol)
        members, batch = u.shape[:2]
        assert cosines.shape == (members * (members - 1) // 2, batch)


@pytest.mark.parametrize("device", DEVICES)
def test_backward_matches_reference(device):
    for u in sample_inputs(device, requires_grad=True):
        grad_sq = torch.randn(u.shape[:2], device=device, dtype=u.dtype)
        grad_cos = torch.randn(u.shape[0] * (u.shape[0] - 1) // 2, u.shape[1], device=device, dtype=u.dtype)

        def weighted(stats):
            return (stats[0] * grad_sq).sum() + (stats[1] * grad_cos).sum()

        (ours,) = torch.autograd.grad(weighted(ops.curvature_stats(u)), u)
        (ref,) = torch.autograd.grad(weighted(curvature_statistics(u)), u)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for u in sample_inputs(device, requires_grad=True):
        torch.library.opcheck(torch.ops.edlcm_ext.curvature_stats.default, (u, 1e-8))
        sq_norms, cosines = ops.curvature_stats(u.detach())
        backward_args = (torch.randn_like(sq_norms), torch.randn_like(cosines), u.detach(), sq_norms, cosines, 1e-8)
        torch.library.opcheck(torch.ops.edlcm_ext._curvature_stats_backward.default, backward_args)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    for u in sample_inputs(device, requires_grad=True):
        if (u.flatten(2).norm(dim=2) == 0).any():
            continue  # the eps clamp is not differentiable at a zero vector
        assert torch.autograd.gradcheck(lambda t: ops.curvature_stats(t), (u,))


def test_double_backward_raises_clear_error():
    u = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    sq_norms, cosines = ops.curvature_stats(u)
    (grad_u,) = torch.autograd.grad(sq_norms.sum() + cosines.sum(), u, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward of curvature_stats is not supported"):
        grad_u.sum().backward()


@pytest.mark.parametrize(
    "u, message",
    [
        (torch.randn(3, 4), "shape \\(M, B, D\\)"),
        (torch.randn(2, 3, 4).to(torch.float16), "float32 or float64"),
    ],
)
def test_bad_input_is_rejected(u, message):
    with pytest.raises(RuntimeError, match=message):
        ops.curvature_stats(u)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_at_training_sizes_against_float64(device):
    """D = 3*32*32*6 = 18,432 (a CIFAR input gradient; 72 blocks of 256 on the CUDA grid's y and
    past the CPU grain), B = 64, M = 3: float32 forward and backward against float64 ground truth.
    Tolerance: float32 dot products of 18k terms err by ~sqrt(D)*2^-24 ~ 1e-5 relative; 1e-4 leaves
    margin, while a dropped or doubled term (relative error >= 1/D ~ 5e-5 per element, far more
    for a wrong coefficient) in a norm or cosine would exceed it."""
    generator = torch.Generator().manual_seed(0)
    u64 = torch.randn(3, 64, 18_432, generator=generator, dtype=torch.float64)
    u64[1] += 0.5 * u64[0]  # correlated members: cosines away from 0
    grad_sq = torch.randn(3, 64, generator=generator, dtype=torch.float64)
    grad_cos = torch.randn(3, 64, generator=generator, dtype=torch.float64)
    results = {}
    for dtype in (torch.float32, torch.float64):
        u = u64.to(device=device, dtype=dtype).requires_grad_(True)
        sq_norms, cosines = ops.curvature_stats(u)
        weighted = (sq_norms * grad_sq.to(u)).sum() + (cosines * grad_cos.to(u)).sum()
        (grad_u,) = torch.autograd.grad(weighted, u)
        results[dtype] = [t.detach().double().cpu() for t in (sq_norms, cosines, grad_u)]
    for ours, truth in zip(results[torch.float32], results[torch.float64]):
        torch.testing.assert_close(ours, truth, rtol=1e-4, atol=1e-4 * truth.abs().max().item())
    assert results[torch.float64][1][0].abs().mean() > 0.3  # the cosine pair (0, 1) is far from 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)
def test_cuda_backward_past_the_grid_y_limit():
    """D > 65535 * 256: the backward's grid.y is capped and the kernel loops over the rest of D."""
    D = 65535 * 256 + 4097
    u = torch.randn(2, 1, D, device="cuda", requires_grad=True)
    sq_norms, cosines = ops.curvature_stats(u)
    (grad,) = torch.autograd.grad(sq_norms.sum() + cosines.sum(), u)
    (expected,) = torch.autograd.grad(sum(t.sum() for t in curvature_statistics(u)), u)
    torch.testing.assert_close(grad[:, :, -4097:], expected[:, :, -4097:], rtol=1e-4, atol=1e-6)  # the looped tail
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)
def test_cuda_too_many_members_for_shared_memory_is_a_clear_error():
    u = torch.randn(80, 2, 8, device="cuda", dtype=torch.float64)  # 80 * 80 doubles = 51,200 bytes > 48 KiB
    with pytest.raises(RuntimeError, match="80 members need 51200 bytes of shared memory"):
        ops.curvature_stats(u)
