"""Adversarial training (`at`) and TRS (`trs`) against implementations written here from their papers
and TRS's public code: softmax-regression members, whose input gradients (and the gradient of their
norm) have closed forms, so neither crafting nor the losses share code or autograd's double backward
with edlcm_ext."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import parameter_grads

from edlcm_ext.models import build_model
from edlcm_ext.models.ensemble import Ensemble
from edlcm_ext.training.methods import build_method

DIMS, CLASSES = 6, 3


def regressions(seed=0, members=3, steepness=3.0):
    """Softmax regressions f_m(x) = W_m x + b_m (float64), a twin copy, and a batch in [0, 1]."""
    torch.manual_seed(seed)
    models = [torch.nn.Linear(DIMS, CLASSES).double() for _ in range(members)]
    with torch.no_grad():
        for model in models:
            model.weight.mul_(steepness)
    x, y = torch.rand(8, DIMS, dtype=torch.float64), torch.randint(0, CLASSES, (8,))
    return models, copy.deepcopy(models), x, y


def one_hot(y):
    return F.one_hot(y, CLASSES).double()


def input_gradient(model, x, y):
    """Per-sample gradient of CE(Wx + b, y) in x: W^T (softmax - e_y)."""
    return (torch.softmax(model(x), dim=1) - one_hot(y)) @ model.weight


def ensemble_ce_gradient(models, x, y):
    """Gradient in x of -log pbar_y, pbar = mean_m softmax(W_m x + b_m): -(1/pbar_y) mean_m p_my (W_my - p_m^T W_m)."""
    probabilities = [torch.softmax(m(x), dim=1) for m in models]
    mean_y = sum(p.gather(1, y[:, None]) for p in probabilities) / len(models)
    slopes = [p.gather(1, y[:, None]) * (m.weight[y] - p @ m.weight) for p, m in zip(probabilities, models)]
    return -(sum(slopes) / len(models)) / mean_y


def clip(z, x, eps):
    return torch.minimum(torch.maximum(z, x - eps), x + eps).clamp(0, 1)


@pytest.mark.parametrize("steps, start", [(1, True), (3, False), (4, True)])
def test_at_crafts_signed_steps_on_the_ensemble_ce_and_trains_on_them(steps, start):
    eps = 0.05
    models, twins, x, y = regressions()
    method = build_method("at", eps=eps, steps=steps, random_start=start)
    step = 1.25 * eps if steps == 1 else 2.5 * eps / steps  # Wong et al.'s; Madry et al.'s rule
    torch.manual_seed(7)
    loss, logs = method.loss(Ensemble(models), x, y)
    torch.manual_seed(7)
    crafted = clip(x + torch.empty_like(x).uniform_(-eps, eps), x, eps) if start else x.clone()
    with torch.no_grad():
        for _ in range(steps):
            crafted = clip(crafted + step * ensemble_ce_gradient(twins, crafted, y).sign(), x, eps)
    expected = sum(F.cross_entropy(m(crafted), y) for m in twins)
    assert (crafted - x).abs().max() <= eps + 1e-12 and crafted.min() >= 0 and crafted.max() <= 1
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(logs["ce"], expected, rtol=1e-12, atol=0)
    for a, b in zip(parameter_grads(models, loss), parameter_grads(twins, expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_at_crafts_in_train_mode_and_leaves_batchnorm_statistics_to_the_training_forward():
    """The crafted batch is computed with batch statistics (train mode), and after a whole step the
    running statistics are those of one training forward on the crafted batch."""
    torch.manual_seed(0)
    members = [build_model("small_cnn", 10).double().train() for _ in range(2)]
    twins = copy.deepcopy(members)
    x, y = torch.rand(6, 3, 16, 16, dtype=torch.float64), torch.randint(0, 10, (6,))
    eps = 0.03
    method = build_method("at", eps=eps, random_start=False)
    crafted = method.craft(Ensemble(members), x, y)
    for member, twin in zip(members, twins):  # crafting alone moved no running statistic
        for (name, a), b in zip(member.named_buffers(), twin.buffers()):
            assert torch.equal(a, b), name
    x0 = x.clone().requires_grad_(True)
    mean = sum(torch.softmax(t(x0), dim=1) for t in copy.deepcopy(twins)) / 2  # train mode, batch statistics
    (gradient,) = torch.autograd.grad(F.nll_loss(mean.log(), y, reduction="sum"), x0)
    torch.testing.assert_close(crafted, clip(x + 1.25 * eps * gradient.sign(), x, eps), rtol=0, atol=0)
    method.loss(Ensemble(members), x, y)
    for twin in twins:
        twin(crafted)  # the one training forward
    for member, twin in zip(members, twins):
        for a, b in zip(member.buffers(), twin.buffers()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def smoothness(gradients):
    """TRS's code: Magnitude(grad of the batch-mean CE at batch 128) = 2 mean_b |g_b / 128|^2, averaged over members."""
    return sum(2 * (g / 128).pow(2).sum(dim=1).mean() for g in gradients) / len(gradients)


def squared_norm_gradient(model, x, y):
    """Gradient in x of |W^T (s - e_y)|^2 per sample, s = softmax(Wx + b): 2 W^T (diag(s) - s s^T) W W^T (s - e_y)."""
    s = torch.softmax(model(x), dim=1)
    v = (s - one_hot(y)) @ model.weight @ model.weight.T  # (B, C): W W^T (s - e) per sample
    jacobian_t_v = s * v - s * (s * v).sum(dim=1, keepdim=True)  # (diag(s) - s s^T) v
    return 2 * jacobian_t_v @ model.weight


@pytest.mark.parametrize("epoch", [0, 5])
def test_trs_is_its_codes_loss_with_the_neighbour_that_ascends_the_gradient_norm(epoch):
    scale, coeff, lamda, init_eps, adv_eps, steps = 5.0, 2.0, 2.0, 0.1, 0.2, 6
    models, twins, x, y = regressions(seed=3)
    method = build_method("trs")  # TRS's code's CIFAR-10 coefficients are the defaults
    method.set_progress(epoch, 10)
    eps = init_eps + (adv_eps - init_eps) * epoch / 10
    torch.manual_seed(5)
    loss, logs = method.loss(Ensemble(models), x, y)
    torch.manual_seed(5)
    half = x.shape[0] // 2
    x_far, y_far = x[half:], y[half:]
    neighbour = clip(x_far + torch.empty_like(x_far).uniform_(-eps, eps), x_far, eps)
    with torch.no_grad():
        for _ in range(steps):
            ascent = sum(squared_norm_gradient(m, neighbour, y_far) for m in twins)
            neighbour = clip(neighbour + eps / 3 * ascent.sign(), x_far, eps)
    x_smooth = torch.cat([x[:half], neighbour])
    ce = sum(F.cross_entropy(m(x), y) for m in twins)
    gradients = [input_gradient(m, x, y) for m in twins]
    similarity = (
        sum(
            F.cosine_similarity(gradients[i], gradients[j], dim=1).abs().mean()
            for i, j in itertools.combinations(range(3), 2)
        )
        / 3
    )
    smooth = smoothness([input_gradient(m, x_smooth, y) for m in twins])
    expected = ce + scale * (coeff * similarity + lamda * smooth)
    torch.testing.assert_close(logs["cos"], similarity, rtol=1e-10, atol=0)
    torch.testing.assert_close(logs["smooth"], smooth, rtol=1e-10, atol=0)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    for a, b in zip(parameter_grads(models, loss), parameter_grads(twins, expected), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(
    "name, options, argument",
    [
        ("at", {"eps": 0.0}, "eps"),
        ("at", {"eps": float("nan")}, "eps"),
        ("at", {"steps": 0}, "steps"),
        ("at", {"steps": 1.5}, "steps"),
        ("at", {"step_size": -0.1}, "step_size"),
        ("at", {"random_start": "yes"}, "random_start"),
        ("trs", {"scale": -1.0}, "scale"),
        ("trs", {"lamda": float("inf")}, "lamda"),
        ("trs", {"init_eps": 0.0}, "init_eps"),
        ("trs", {"steps": 0}, "steps"),
    ],
)
def test_bad_options_name_the_option(name, options, argument):
    with pytest.raises(ValueError, match=argument):
        build_method(name, **options)


def test_trs_needs_two_members():
    assert build_method("trs").members_needed() == 2
