"""EDLCM's math (eqs 2, 8-11) against derivations that share no code with edlcm_ext.loss.reference: a
closed form for softmax regression, and a second implementation written here from the paper."""

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, ensemble, parameter_grads

from edlcm_ext import HvpCurvatureLoss


def assert_grads_close(ours, expected):
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def sign_direction(gradient):
    """g = sign(grad) / |sign(grad)|_2 per sample (sec. III-B)."""
    sign = gradient.sign()
    return sign / sign.flatten(1).norm(dim=1).clamp_min(1.0).view(-1, *([1] * (gradient.dim() - 1)))


def softmax_regression_u(models, x, y, h):
    """u_m (eq 8 without 1/h) per member of f_m(x) = W_m x + b_m, by formula: the per-sample gradient
    of the summed CE is grad_x CE_b = W^T (softmax(W x_b + b) - e_y), so no double backprop at all."""
    classes = models[0].out_features

    def input_gradient(model, z):
        return (torch.softmax(model(z), dim=1) - F.one_hot(y, classes).double()) @ model.weight

    u = []
    for model in models:
        g = sign_direction(input_gradient(model, x).detach())
        u.append(input_gradient(model, x + h * g) - input_gradient(model, x))
    return u


def test_softmax_regression_closed_form():
    """f_m(x) = W_m x + b_m: grad_x CE_b = W^T (softmax(W x_b + b) - e_y), so u and its parameter
    gradient follow from that formula with no double backprop at all (float64)."""
    torch.manual_seed(0)
    dims, classes, size, h, alpha, beta = 7, 4, 5, 0.3, 0.8, 0.6
    models = [torch.nn.Linear(dims, classes).double() for _ in range(3)]
    twins = copy.deepcopy(models)
    x, y = torch.randn(size, dims, dtype=torch.float64), torch.randint(0, classes, (size,))

    def closed_form():
        u = softmax_regression_u(twins, x, y, h)
        l_r_sum = sum((um**2).sum(dim=1).mean() for um in u)
        l_g = sum(F.cosine_similarity(u[i], u[j], dim=1).mean() for i, j in itertools.combinations(range(3), 2))
        return l_r_sum, l_g, sum(F.cross_entropy(m(x), y) for m in twins)

    for reduction, scale in (("per_sample", 1.0), ("mean", 1.0 / size)):
        l_r_sum, l_g, ece = closed_form()
        l_r = l_r_sum * scale
        terms = HvpCurvatureLoss(every=1, alpha=alpha, beta=beta, h=h, reduction=reduction).terms(models, x, y)
        torch.testing.assert_close(terms.l_r, l_r, rtol=1e-12, atol=0)
        torch.testing.assert_close(terms.l_g, l_g, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(terms.ece, ece, rtol=1e-12, atol=0)
        assert_grads_close(
            parameter_grads(models, terms.ece + terms.total), parameter_grads(twins, ece + alpha * l_r + beta * l_g)
        )


@pytest.mark.parametrize("compiled", [False, {"backend": "aot_eager"}], ids=["eager", "compiled"])
def test_correct_only_counts_each_members_correctly_classified_samples_over_all_b(compiled):
    """Softmax regressions by formula: with correct_only, L_r = sum_m mean_b [argmax f_m(x_b) = y_b] |u_mb|^2
    (the mean still over all B), L_g as without it; the parameter gradient is that formula's."""
    torch.manual_seed(1)
    dims, classes, size, h, alpha, beta = 6, 3, 12, 0.3, 0.7, 0.4
    models = [torch.nn.Linear(dims, classes).double() for _ in range(3)]
    twins = copy.deepcopy(models)
    x, y = torch.randn(size, dims, dtype=torch.float64), torch.randint(0, classes, (size,))

    u = softmax_regression_u(twins, x, y, h)
    correct = [(m(x).argmax(dim=1) == y).double() for m in twins]
    assert 0 < sum(float(c.sum()) for c in correct) < 3 * size  # some samples right, some wrong
    l_r = sum(((um**2).sum(dim=1) * c).mean() for um, c in zip(u, correct))
    l_g = sum(F.cosine_similarity(u[i], u[j], dim=1).mean() for i, j in itertools.combinations(range(3), 2))
    ece = sum(F.cross_entropy(m(x), y) for m in twins)
    regularizer = HvpCurvatureLoss(
        every=1, alpha=alpha, beta=beta, h=h, max_ratio=None, max_pull=None, correct_only=True, compiled=compiled
    )
    terms = regularizer.terms(models, x, y)
    torch.testing.assert_close(terms.l_r, l_r, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.l_g, l_g, rtol=1e-12, atol=1e-15)
    assert_grads_close(
        parameter_grads(models, terms.ece + terms.total), parameter_grads(twins, ece + alpha * l_r + beta * l_g)
    )


def paper_edlcm(models, x, y, alpha, beta, h):
    """Eqs 2, 8-11 written from the paper in the "sum" convention: per-sample input gradients of CE,
    g from their sign, u = grad(x + h g) - grad(x), L_r = sum_m mean_b |u|^2, L_g = sum_{i<j} mean_b cos."""
    u, ece = [], 0
    for model in models:
        x0 = x.clone().requires_grad_(True)
        logits = model(x0)
        ece = ece + F.cross_entropy(logits, y)
        (grad0,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x0, create_graph=True)
        x1 = (x + h * sign_direction(grad0.detach())).requires_grad_(True)
        (grad1,) = torch.autograd.grad(F.cross_entropy(model(x1), y, reduction="sum"), x1, create_graph=True)
        u.append((grad1 - grad0).flatten(1))
    l_r = sum(um.pow(2).sum(dim=1).mean() for um in u)
    l_g = sum(F.cosine_similarity(u[i], u[j], dim=1).mean() for i, j in itertools.combinations(range(len(u)), 2))
    return ece + alpha * l_r + beta * l_g, l_r, l_g


@pytest.mark.parametrize("train", [True, False])
def test_second_implementation_on_a_batchnorm_cnn(train):
    models = [m.train(train) for m in ensemble()]
    twins = copy.deepcopy(models)
    x, y = batch(size=6)
    terms = HvpCurvatureLoss(every=1, alpha=0.7, beta=0.4, h=0.2, reduction="per_sample").terms(models, x, y)
    loss, l_r, l_g = paper_edlcm(twins, x, y, 0.7, 0.4, 0.2)
    torch.testing.assert_close(terms.l_r, l_r, rtol=1e-10, atol=0)
    torch.testing.assert_close(terms.l_g, l_g, rtol=1e-10, atol=1e-13)
    assert_grads_close(parameter_grads(models, terms.ece + terms.total), parameter_grads(twins, loss))


def softmax_regression_terms(models, x, y, h, max_ratio, alpha, beta):
    """Eqs 2, 8-11 for f_m(x) = W_m x + b_m by formula (grad_x CE_b = W^T (softmax - e_y)), in the
    per-sample convention, with alpha capped at max_ratio * CE / L_r: (loss, ce, l_r, l_g, alpha used)."""
    u = softmax_regression_u(models, x, y, h)
    ce = sum(F.cross_entropy(m(x), y) for m in models)
    l_r = sum((um**2).sum(dim=1).mean() for um in u)
    l_g = sum(F.cosine_similarity(u[i], u[j], dim=1).mean() for i, j in itertools.combinations(range(len(u)), 2))
    used = min(alpha, max_ratio * ce.item() / l_r.item())
    return ce + used * l_r + beta * l_g, ce, l_r, l_g, used


def test_default_scale_is_the_per_sample_closed_form_at_h_0_1_for_any_batch_size():
    """The defaults, written out here on purpose (alpha 1, beta 0.01, h 0.1, per-sample, cap 1, the
    regularizer on one call in 16 at weight 16): a changed default or a batch-size factor in L_r fails
    this test. The first call is the regularizing one; the next 15 add nothing. Doubling the batch
    (the same samples twice) leaves every term unchanged."""
    torch.manual_seed(1)
    dims, classes, k = 6, 3, 16
    models = [torch.nn.Linear(dims, classes).double() for _ in range(3)]
    x, y = torch.randn(5, dims, dtype=torch.float64), torch.randint(0, classes, (5,))
    loss, ce, l_r, l_g, used = softmax_regression_terms(
        copy.deepcopy(models), x, y, h=0.1, max_ratio=1.0, alpha=1.0, beta=0.01
    )
    assert used == 1.0  # the cap is not engaged here: this is the plain per-sample scale
    for xs, ys in ((x, y), (torch.cat([x, x]), torch.cat([y, y]))):
        regularizer = HvpCurvatureLoss()
        terms = regularizer.terms(models, xs, ys)
        torch.testing.assert_close(terms.l_r, l_r, rtol=1e-12, atol=0)
        torch.testing.assert_close(terms.l_g, l_g, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(terms.ece + terms.total, ce + k * (loss - ce), rtol=1e-12, atol=0)
        skipped = [regularizer.terms(models, xs, ys) for _ in range(k - 1)]
        assert not any(t.applied or t.total.item() for t in skipped) and regularizer.terms(models, xs, ys).applied


def steep_softmax_regressions(seed: int, steepness: float, dims: int = 6, classes: int = 3, batch: int = 8):
    """Three float64 softmax regressions with weights scaled by ``steepness`` (their curvature grows with
    it), a deep copy of them, and a random batch: (models, twins, x, y)."""
    torch.manual_seed(seed)
    models = [torch.nn.Linear(dims, classes).double() for _ in range(3)]
    with torch.no_grad():
        for model in models:
            model.weight.mul_(steepness)
    x, y = torch.randn(batch, dims, dtype=torch.float64), torch.randint(0, classes, (batch,))
    return models, copy.deepcopy(models), x, y


def test_max_ratio_caps_alpha_times_l_r_at_that_multiple_of_the_ce():
    """Steeper softmax regressions and a low cap: alpha * L_r would be above max_ratio * CE, so the
    loss is CE + max_ratio * CE + beta * L_g in value, and its gradient is that of CE + c L_r + beta L_g
    with the constant c = max_ratio * CE / L_r (the cap is not differentiated). (Much steeper weights
    saturate the softmax, and round-off then flips signs of near-zero input gradients, so g differs.)"""
    alpha, beta, max_ratio = 1.0, 0.3, 0.002
    models, twins, x, y = steep_softmax_regressions(seed=2, steepness=8)
    terms = HvpCurvatureLoss(every=1, alpha=alpha, beta=beta, max_ratio=max_ratio).terms(models, x, y)
    loss, ce, l_r, l_g, used = softmax_regression_terms(twins, x, y, h=0.1, max_ratio=max_ratio, alpha=alpha, beta=beta)
    assert used < 0.5 * alpha  # engaged
    torch.testing.assert_close(terms.alpha_applied, torch.tensor(used, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(terms.total, max_ratio * ce + beta * l_g, rtol=1e-12, atol=0)
    assert_grads_close(parameter_grads(models, terms.ece + terms.total), parameter_grads(twins, loss))
    uncapped = HvpCurvatureLoss(every=1, alpha=alpha, beta=beta, max_ratio=None).terms(copy.deepcopy(twins), x, y)
    torch.testing.assert_close(uncapped.total, alpha * l_r + beta * l_g, rtol=1e-12, atol=0)


@pytest.mark.parametrize("engaged", [True, False], ids=["cap_engaged", "cap_only_above_k_weight"])
def test_max_ratio_under_every_k_caps_the_calls_own_term_and_applies_a_capped_one_once(engaged):
    """every=k: the cap compares the call's own alpha * L_r with max_ratio * CE, exactly as the every=1
    step on that batch would. Engaged: the regularizing call is max_ratio CE + beta L_g once, with the
    exact step's alpha_applied (the cap is the most one step may take). Not engaged, with the cap
    between alpha L_r and k alpha L_r: the call is k (alpha L_r + beta L_g) in full."""
    alpha, beta, k = 1.0, 0.3, 4
    models, twins, x, y = steep_softmax_regressions(seed=2, steepness=8)
    _, ce, l_r, l_g, _ = softmax_regression_terms(copy.deepcopy(twins), x, y, 0.1, math.inf, alpha, beta)
    ratio = alpha * l_r.item() / ce.item()  # alpha L_r / CE on this batch
    max_ratio = ratio / 2 if engaged else 2 * ratio  # not engaged: alpha L_r < cap CE < k alpha L_r
    loss, ce, l_r, l_g, used = softmax_regression_terms(twins, x, y, 0.1, max_ratio, alpha, beta)
    assert (used < alpha) == engaged
    terms = HvpCurvatureLoss(alpha=alpha, beta=beta, max_ratio=max_ratio, max_pull=None, every=k).terms(models, x, y)
    assert terms.applied
    torch.testing.assert_close(terms.alpha_applied, torch.tensor(used, dtype=torch.float64), rtol=1e-12, atol=0)
    weight = 1 if engaged else k
    expected_total = weight * ((max_ratio * ce if engaged else alpha * l_r) + beta * l_g)
    torch.testing.assert_close(terms.total, expected_total, rtol=1e-12, atol=0)
    assert_grads_close(
        parameter_grads(models, terms.ece + terms.total), parameter_grads(twins, ce + weight * (loss - ce))
    )


@pytest.mark.parametrize("max_pull, engaged", [(0.05, True), (1e6, False)])
def test_max_pull_bounds_the_regularizers_weight_gradient_at_that_multiple_of_the_ces(max_pull, engaged):
    """Softmax regressions by formula, no cap: with max_pull the gradient is that of CE + s (alpha L_r +
    beta L_g) with the constant s = min(1, max_pull |grad CE| / |grad(alpha L_r + beta L_g)|), the norms over
    every member's parameters together; a loose bound leaves the plain step."""
    alpha, beta = 1.0, 0.3
    models, twins, x, y = steep_softmax_regressions(seed=3, steepness=4)
    terms = HvpCurvatureLoss(every=1, alpha=alpha, beta=beta, max_ratio=None, max_pull=max_pull).terms(models, x, y)
    _, ce, l_r, l_g, _ = softmax_regression_terms(twins, x, y, h=0.1, max_ratio=math.inf, alpha=alpha, beta=beta)
    params = [p for m in twins for p in m.parameters()]
    ce_grads = torch.autograd.grad(ce, params, retain_graph=True)
    regularizer_grads = torch.autograd.grad(alpha * l_r + beta * l_g, params)
    ce_norm = math.sqrt(sum(float((g**2).sum()) for g in ce_grads))
    regularizer_norm = math.sqrt(sum(float((g**2).sum()) for g in regularizer_grads))
    s = min(1.0, max_pull * ce_norm / regularizer_norm)
    assert (s < 0.5) == engaged
    torch.testing.assert_close(terms.alpha_applied, torch.tensor(alpha * s, dtype=torch.float64), rtol=1e-10, atol=0)
    torch.testing.assert_close(terms.total, s * (alpha * l_r + beta * l_g), rtol=1e-10, atol=0)
    expected = [c + s * r for c, r in zip(ce_grads, regularizer_grads)]
    assert_grads_close(parameter_grads(models, terms.ece + terms.total), expected)
