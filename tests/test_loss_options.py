"""HvpCurvatureLoss's options: the L_r convention (reduction), lazy and partial-batch regularization
(every), the dominance warning, validation-mode calls and autocast."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA_SKIP_REASON, DEVICES, batch, ensemble, parameter_grads

from edlcm_ext import HvpCurvatureLoss, ops
from edlcm_ext.fused import fused_layers
from edlcm_ext.loss.hvp_curvature_loss import DEFAULT_H
from edlcm_ext.loss.regularizer import input_gradient_differences, terms_from_statistics
from edlcm_ext.models import build_model


def assert_same_grads(ours, expected, rtol=1e-10):
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item()))


def test_mean_convention_is_eq9_with_the_batch_mean_cross_entropy():
    """Independent of edlcm_ext.loss.reference: u from autograd on nn.CrossEntropyLoss() (batch mean) and
    the squared norm over the whole batch, for one member (so L_g plays no part)."""
    (model,) = [m.eval() for m in ensemble(members=1)]
    x, y = batch(size=5)
    h = 0.1
    x0 = x.clone().requires_grad_(True)
    (grad0,) = torch.autograd.grad(torch.nn.CrossEntropyLoss()(model(x0), y), x0)
    sign = grad0.sign()
    g = sign / sign.flatten(1).norm(dim=1).view(-1, 1, 1, 1)  # per-sample unit sign direction (sec. III-B)
    x1 = (x + h * g).requires_grad_(True)
    (grad1,) = torch.autograd.grad(torch.nn.CrossEntropyLoss()(model(x1), y), x1)
    expected = (grad1 - grad0).pow(2).sum()
    terms = HvpCurvatureLoss(every=1, alpha=1.0, beta=0.0, h=h, reduction="mean").terms([model], x, y)
    torch.testing.assert_close(terms.l_r, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("train", [True, False])
def test_conversion_rule_between_conventions_is_exact(train):
    """L_r(mean) = L_r(per_sample) / B, so alpha_per_sample = alpha_mean / B gives the same loss and gradients."""
    models = [m.train(train) for m in ensemble()]
    twin = copy.deepcopy(models)
    x, y = batch(size=6)
    alpha, beta = 0.7, 0.3
    mean = HvpCurvatureLoss(every=1, alpha=alpha, beta=beta, reduction="mean").terms(models, x, y)
    summed = HvpCurvatureLoss(every=1, alpha=alpha / x.shape[0], beta=beta, reduction="per_sample").terms(twin, x, y)
    torch.testing.assert_close(mean.l_r * x.shape[0], summed.l_r, rtol=1e-12, atol=0)
    torch.testing.assert_close(mean.l_g, summed.l_g, rtol=1e-12, atol=0)
    torch.testing.assert_close(mean.total, summed.total, rtol=1e-12, atol=0)
    assert_same_grads(parameter_grads(models, mean.ece + mean.total), parameter_grads(twin, summed.ece + summed.total))


def test_every_1_and_full_batch_are_bit_identical_to_the_plain_pipeline():
    """The exact step without the pull bound changes nothing: the same float32 bits as the
    pipeline before they existed (fused input-gradient differences, the stats op, eq 11)."""
    models = [m.float() for m in ensemble()]
    twin = copy.deepcopy(models)
    x, y = batch(dtype=torch.float32)
    ours = HvpCurvatureLoss(reduction="per_sample", every=1, max_pull=None).terms(models, x, y)
    with fused_layers():
        u, ece, _ = input_gradient_differences(twin, x, y, DEFAULT_H)
    plain = terms_from_statistics(*ops.curvature_stats(u, 1e-8), ece, 1.0, 0.01)
    for name in ("total", "ece", "l_r", "l_g"):
        assert torch.equal(getattr(ours, name), getattr(plain, name)), name
    for a, b in zip(parameter_grads(models, ours.ece + ours.total), parameter_grads(twin, plain.ece + plain.total)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_layers_off_gives_the_same_terms_and_gradients(channels_last):
    """fused_layers=False runs PyTorch's own BatchNorm and Conv2d double backward: same numbers."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    models = [m.to(memory_format=layout) for m in ensemble()]
    twin = copy.deepcopy(models)
    x, y = batch()
    x = x.contiguous(memory_format=layout)
    fused = HvpCurvatureLoss(every=1).terms(models, x, y)
    plain = HvpCurvatureLoss(every=1, fused_layers=False).terms(twin, x, y)
    for name in ("total", "ece", "l_r", "l_g"):
        torch.testing.assert_close(getattr(fused, name), getattr(plain, name), rtol=1e-10, atol=1e-12)
    for a, b in zip(parameter_grads(models, fused.ece + fused.total), parameter_grads(twin, plain.ece + plain.total)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_every_k_scales_the_regularized_call_and_leaves_exactly_the_ce_on_the_others():
    models = ensemble()
    x, y = batch()
    k = 3
    lazy, exact = HvpCurvatureLoss(every=k, beta=0.5), HvpCurvatureLoss(every=1, beta=0.5)
    for call in range(2 * k):
        reference_models = copy.deepcopy(models)
        terms = lazy.terms(models, x, y)
        if call % k == 0:
            expected = exact.terms(reference_models, x, y)
            assert terms.applied
            torch.testing.assert_close(terms.total, k * expected.total, rtol=1e-12, atol=0)
            torch.testing.assert_close(terms.l_r, expected.l_r, rtol=1e-12, atol=0)
            assert_same_grads(
                parameter_grads(models, terms.total), parameter_grads(reference_models, k * expected.total)
            )
        else:
            ce = sum(F.cross_entropy(m(x), y) for m in reference_models)
            assert not terms.applied and terms.total.item() == 0 and terms.l_r.item() == 0
            torch.testing.assert_close(terms.ece, ce, rtol=0, atol=0)
            assert_same_grads(
                parameter_grads(models, terms.ece + terms.total), parameter_grads(reference_models, ce), rtol=0
            )
    assert lazy.calls == 2 * k


def test_every_k_forward_skips_all_work_on_the_other_calls():
    models = ensemble()
    x, y = batch()
    lazy = HvpCurvatureLoss(every=2)
    lazy(models, x, y)
    calls = []
    hooks = [m.register_forward_hook(lambda *args: calls.append(1)) for m in models]
    value = lazy(models, x, y)
    assert calls == [] and value.item() == 0 and value.requires_grad
    for hook in hooks:
        hook.remove()


def test_schedule_state_survives_state_dict():
    models = [m.eval() for m in ensemble()]
    x, y = batch()
    original = HvpCurvatureLoss(every=3)
    for _ in range(4):
        original.terms(models, x, y)
    restored = HvpCurvatureLoss(every=3)
    restored.load_state_dict(original.state_dict())
    assert restored.calls == 4
    a, b = original.terms(models, x, y), restored.terms(models, x, y)
    assert a.applied == b.applied and torch.equal(a.total, b.total)


def test_a_term_bounded_under_every_k_is_applied_once_and_an_unbounded_one_k_times():
    """The lazy default's k weighting applied to a capped term diverged torchvision's resnet18: a term
    the cap (or the pull bound) lowered on its batch joins the step once; an unbounded one k times."""
    models = ensemble()
    x, y = batch()
    tight = {"max_ratio": 1e-6, "max_pull": None}  # the cap engages on any batch
    lazy, exact = (
        HvpCurvatureLoss(every=4, **tight).terms(models, x, y),
        HvpCurvatureLoss(every=1, **tight).terms(models, x, y),
    )
    assert float(exact.alpha_applied) < 0.5  # engaged
    torch.testing.assert_close(lazy.total, exact.total, rtol=1e-12, atol=0)
    loose = {"max_ratio": None, "max_pull": None}
    lazy, exact = (
        HvpCurvatureLoss(every=4, **loose).terms(models, x, y),
        HvpCurvatureLoss(every=1, **loose).terms(models, x, y),
    )
    torch.testing.assert_close(lazy.total, 4 * exact.total, rtol=1e-12, atol=0)


def test_dominance_warning_fires_once_for_an_absurd_alpha_and_not_for_the_default():
    models = ensemble()
    x, y = batch()
    with pytest.warns(
        RuntimeWarning, match=r"alpha \* L_r .* alpha=1e\+06 and reduction='per_sample'.*max_ratio.*max_pull"
    ):
        absurd = HvpCurvatureLoss(alpha=1e6, max_ratio=None, max_pull=None)
        absurd.terms(models, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        absurd.terms(models, x, y)  # once only
        HvpCurvatureLoss(every=1).terms(models, x, y)


def test_max_pull_on_a_batchnorm_cnn_bounds_the_calls_own_pull_and_applies_it_once():
    """every=2 weighs an unbounded regularizing call by 2; a call whose pull the bound lowered joins the
    step once, so the step is grad CE + s grad(regularizer) with s taken from an unbounded twin's two
    gradients: the bound is the most the regularizer may pull in one step."""
    models = ensemble()
    twins = copy.deepcopy(models)
    x, y = batch()
    terms = HvpCurvatureLoss(max_pull=0.005, every=2).terms(models, x, y)
    plain = HvpCurvatureLoss(max_pull=None, every=2).terms(twins, x, y)
    params = [p for m in twins for p in m.parameters()]
    ce_grads = torch.autograd.grad(plain.ece, params, retain_graph=True)
    regularizer_grads = torch.autograd.grad(plain.total / 2, params)
    norm = lambda grads: torch.sqrt(sum((g**2).sum() for g in grads))  # noqa: E731
    s = min(1.0, float(0.005 * norm(ce_grads) / norm(regularizer_grads)))
    assert s < 0.5  # engaged
    torch.testing.assert_close(
        terms.total, s * plain.total.detach() / 2, rtol=1e-10, atol=0
    )  # plain.total is 2x its pull
    expected = [c + s * r for c, r in zip(ce_grads, regularizer_grads)]
    for ours, theirs in zip(parameter_grads(models, terms.ece + terms.total), expected, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-11)


def test_max_pull_on_frozen_members_names_max_pull():
    models = ensemble()
    for model in models:
        model.requires_grad_(False)
    x, y = batch()
    with pytest.raises(ValueError, match="^max_pull bounds the pull"):
        HvpCurvatureLoss(every=1, max_pull=0.3).terms(models, x, y)


def test_validation_call_under_no_grad_returns_detached_values_and_keeps_the_schedule():
    models = [m.eval() for m in ensemble()]
    x, y = batch()
    loss = HvpCurvatureLoss(every=2)
    with torch.no_grad():
        terms = loss.terms(models, x, y)
    expected = HvpCurvatureLoss(every=1).terms(models, x, y)
    assert loss.calls == 0 and not terms.total.requires_grad
    torch.testing.assert_close(terms.total, expected.total.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"every": 0}, "every"),
        ({"every": 1.5}, "every"),
        ({"reduction": "avg"}, "reduction"),
        ({"max_ratio": -1.0}, "max_ratio"),
        ({"max_pull": 0.0}, "max_pull"),
        ({"max_pull": float("nan")}, "max_pull"),
    ],
)
def test_bad_option_values_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        HvpCurvatureLoss(**kwargs)


def test_unbatched_image_gets_an_error_naming_x():
    models = ensemble()
    x, y = batch(size=1)
    with pytest.raises(ValueError, match=r"x has shape \(3, 8, 8\).*x.unsqueeze\(0\)"):
        HvpCurvatureLoss(every=1)(models, x[0], y)


@pytest.mark.parametrize("device", DEVICES)
def test_under_autocast_the_regularizer_keeps_float32_values(device):
    """bf16 autocast around the step: the regularizer's passes run in float32, so its values equal the
    float32 ones to float32 round-off (bf16 would be off by tens of percent: docs/loss.md)."""
    torch.manual_seed(0)
    models = [build_model("small_cnn", 10).to(device).train() for _ in range(3)]
    x, y = torch.rand(16, 3, 32, 32, device=device), torch.randint(0, 10, (16,), device=device)
    reference = HvpCurvatureLoss(every=1).terms(copy.deepcopy(models), x, y)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        terms = HvpCurvatureLoss(every=1).terms(copy.deepcopy(models), x, y)
        (terms.ece + terms.total).backward()
    for name in ("l_r", "l_g", "ece"):
        torch.testing.assert_close(getattr(terms, name), getattr(reference, name), rtol=1e-4, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)
def test_cuda_step_makes_no_host_sync():
    """A whole training step (checks, schedule, passes, stats, backward) with sync debug mode on:
    any device-to-host synchronization raises. The first call is made before, since it runs the
    once-in-1000-calls dominance check, which reads two values on purpose."""
    models = [build_model("small_cnn", 10).cuda().train() for _ in range(3)]
    x, y = torch.rand(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    loss = HvpCurvatureLoss(every=2)
    loss.terms(models, x, y)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        terms = loss.terms(models, x, y)
        (terms.ece + terms.total).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.parametrize("train", [True, False])
def test_default_terms_do_not_depend_on_the_batch_size(train):
    """The batch concatenated with itself has the same terms under the default convention (BatchNorm's
    batch statistics are those of the batch too); under "mean", L_r halves with the doubled batch."""
    models = [m.train(train) for m in ensemble()]
    x, y = batch(size=5)
    doubled = (torch.cat([x, x]), torch.cat([y, y]))
    one, two = (
        HvpCurvatureLoss(every=1).terms(copy.deepcopy(models), x, y),
        HvpCurvatureLoss(every=1).terms(copy.deepcopy(models), *doubled),
    )
    for name in ("ece", "l_r", "l_g", "total"):
        torch.testing.assert_close(getattr(two, name), getattr(one, name), rtol=1e-10, atol=1e-14)
    mean_one = HvpCurvatureLoss(every=1, reduction="mean").terms(copy.deepcopy(models), x, y)
    mean_two = HvpCurvatureLoss(every=1, reduction="mean").terms(copy.deepcopy(models), *doubled)
    torch.testing.assert_close(mean_two.l_r, mean_one.l_r / 2, rtol=1e-10, atol=0)
