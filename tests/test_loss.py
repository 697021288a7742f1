"""HvpCurvatureLoss against the plain-PyTorch reference, and its input validation."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, batch, ensemble, parameter_grads

from edlcm_ext import HvpCurvatureLoss
from edlcm_ext.loss.first_order import FirstOrderCurvatureLoss
from edlcm_ext.loss.reference import edlcm_terms


def assert_grads_close(ours, ref, rtol=1e-6):
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("train", [True, False])
def test_parameter_gradients_match_reference_float64(device, train):
    models = ensemble(device=device)
    for m in models:
        m.train(train)
    reference_models = copy.deepcopy(models)
    x, y = batch(device=device)
    reg = HvpCurvatureLoss(every=1, alpha=1.0, beta=0.5, h=0.1)

    terms = reg.terms(models, x, y)
    ref = edlcm_terms(reference_models, x, y, alpha=1.0, beta=0.5, h=0.1)
    for name in ("total", "ece", "l_r", "l_g"):
        torch.testing.assert_close(getattr(terms, name), getattr(ref, name), rtol=1e-10, atol=1e-12)
    assert terms.l_r > 0 and terms.l_g != 0  # the comparison is not between zeros

    assert_grads_close(
        parameter_grads(models, terms.ece + terms.total), parameter_grads(reference_models, ref.ece + ref.total)
    )
    for m, r in zip(models, reference_models):
        for name, buffer in m.named_buffers():
            # Same computation on both sides (native_batch_norm's update) but tolerant of a cuDNN path on CUDA.
            torch.testing.assert_close(buffer, dict(r.named_buffers())[name], rtol=1e-12, atol=1e-12)


def test_drop_in_usage_equals_terms():
    """`sum of CE + reg(models, x, y)` (with its own forward) gives the same gradient as terms()."""
    models = [m.eval() for m in ensemble()]
    x, y = batch()
    reg = HvpCurvatureLoss(every=1)
    drop_in = sum(F.cross_entropy(m(x), y) for m in models) + reg(models, x, y)
    terms = reg.terms(models, x, y)
    torch.testing.assert_close(drop_in, terms.ece + terms.total)
    assert_grads_close(parameter_grads(models, drop_in), parameter_grads(models, terms.ece + terms.total), rtol=1e-10)


def test_terms_weighting_and_ablations():
    models = [m.eval() for m in ensemble()]
    x, y = batch()
    unbounded = {"every": 1, "max_pull": None}  # the weights as given, the pull bound off
    only_r = HvpCurvatureLoss(alpha=1.0, beta=0.0, **unbounded).terms(models, x, y)
    only_g = HvpCurvatureLoss(alpha=0.0, beta=1.0, **unbounded).terms(models, x, y)
    both = HvpCurvatureLoss(alpha=2.0, beta=3.0, **unbounded).terms(models, x, y)
    torch.testing.assert_close(only_r.total, only_r.l_r)
    torch.testing.assert_close(only_g.total, only_g.l_g)
    torch.testing.assert_close(both.total, 2.0 * both.l_r + 3.0 * both.l_g)


def test_mode_is_unchanged():
    models = ensemble()
    models[1].eval()
    x, y = batch()
    HvpCurvatureLoss(every=1)(models, x, y)
    assert [m.training for m in models] == [True, False, True]


def test_single_member_allowed_without_dispersion_term():
    models = ensemble(members=1)
    x, y = batch()
    assert HvpCurvatureLoss(every=1, beta=0.0).terms(models, x, y).l_g == 0


@pytest.mark.parametrize(
    "make_args, error, message",
    [
        (lambda m, x, y: (m[:1], x, y), ValueError, "models: L_g .* needs at least 2 members"),
        (lambda m, x, y: (m[0], x, y), TypeError, "models must be a sequence"),
        (lambda m, x, y: ([], x, y), TypeError, "models must be a non-empty sequence"),
        (lambda m, x, y: (m, x, y[:-1]), ValueError, "y must have shape"),
        (lambda m, x, y: (m, (x * 255).long(), y), TypeError, "x must be a floating-point tensor"),
        (lambda m, x, y: (m, x, y.double()), TypeError, "y must be an integer tensor"),
        (lambda m, x, y: (m, x, y + 5), ValueError, r"y: labels must lie in \[0, 5\)"),
        (lambda m, x, y: (m, x, y - 10), ValueError, r"y: labels must lie in \[0, 5\)"),
        (
            lambda m, x, y: (m, x.index_put((torch.tensor(0),), torch.tensor(float("nan"), dtype=x.dtype)), y),
            ValueError,
            "x contains non-finite",
        ),
        (
            lambda m, x, y: (m, x.to("meta"), y),
            ValueError,
            "models\\[0\\] is on cpu but x is on meta|y is on cpu but x is on meta",
        ),
    ],
)
def test_bad_inputs_raise_errors_naming_the_argument(make_args, error, message):
    models = ensemble()
    x, y = batch()
    with pytest.raises(error, match=message):
        HvpCurvatureLoss(every=1)(*make_args(models, x, y))


def test_models_on_another_device_than_x():
    models = ensemble()
    x, y = batch()
    models[2].to("meta")
    with pytest.raises(ValueError, match=r"models\[2\] is on meta but x is on cpu"):
        HvpCurvatureLoss(every=1)(models, x, y)


def test_logits_of_wrong_shape():
    models = ensemble() + [torch.nn.Flatten(0)]
    x, y = batch()
    with pytest.raises(ValueError, match="each model must return logits of shape"):
        HvpCurvatureLoss(every=1)(models, x, y)


@pytest.mark.parametrize(
    "kwargs, name", [({"h": 0.0}, "h"), ({"alpha": float("nan")}, "alpha"), ({"max_ratio": -1.0}, "max_ratio")]
)
def test_bad_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        HvpCurvatureLoss(**kwargs)


def test_first_order_gradient_matches_exact_in_float64():
    """The finite-difference mode is the exact gradient up to O(fd_step) where no ReLU flips."""
    models = [m.eval() for m in ensemble()]
    x, y = batch()
    exact = parameter_grads(models, HvpCurvatureLoss(every=1, beta=0.5).terms(models, x, y).total)
    approx = parameter_grads(models, FirstOrderCurvatureLoss(every=1, beta=0.5, fd_step=1e-7).terms(models, x, y).total)
    flat = lambda grads: torch.cat([g.flatten() for g in grads])  # noqa: E731
    assert F.cosine_similarity(flat(exact), flat(approx), dim=0) > 0.999999
    assert abs(flat(approx).norm() / flat(exact).norm() - 1) < 1e-3


def test_first_order_training_step_keeps_running_statistics_of_the_two_passes():
    """A whole step (ensemble CE + regularizer) back-propagates, and the finite-difference passes
    leave BatchNorm's running statistics as the exact mode's two passes do."""
    models = ensemble()
    twin = copy.deepcopy(models)
    x, y = batch()
    terms = FirstOrderCurvatureLoss(every=1).terms(models, x, y)
    (terms.ece + terms.total).backward()
    assert all(p.grad is not None for m in models for p in m.parameters())
    HvpCurvatureLoss(every=1).terms(twin, x, y)
    for m, t in zip(models, twin):
        for a, b in zip(m.buffers(), t.buffers()):
            torch.testing.assert_close(a, b)
