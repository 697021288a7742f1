"""Each training method's loss: finite, differentiable, and equal to its formula on a small case."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from edlcm_ext import HvpCurvatureLoss
from edlcm_ext.models import build_model
from edlcm_ext.models.ensemble import Ensemble
from edlcm_ext.training.methods import METHODS, build_method
from edlcm_ext.training.methods.pdd import parallel_diversified_dropout_mask


def small_ensemble(members=3):
    return Ensemble([build_model("small_cnn", 10, in_channels=1) for _ in range(members)]).double()


def batch():
    return torch.rand(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_is_finite_and_reaches_every_member(name):
    ensemble, (x, y) = small_ensemble(), batch()
    loss, logs = build_method(name).loss(ensemble, x, y)
    assert (
        loss.dim() == 0
        and torch.isfinite(loss)
        and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in logs.values())
    )
    loss.backward()
    for member in ensemble.members:
        assert member.classifier.weight.grad is not None and member.classifier.weight.grad.abs().sum() > 0


def input_gradients(ensemble, x, y):
    x = x.clone().requires_grad_(True)
    return [torch.autograd.grad(F.cross_entropy(m(x), y), x)[0].flatten(1) for m in ensemble.members]


def test_deg_and_gal_follow_their_formulas():
    # train mode: BatchNorm uses batch statistics, a deterministic function of the batch, so the
    # independent input gradients below see the same function as the methods do
    ensemble, (x, y) = small_ensemble().train(), batch()
    ce = sum(F.cross_entropy(m(x), y) for m in ensemble.members)
    grads = input_gradients(ensemble, x, y)
    cosines = torch.stack([F.cosine_similarity(a, b, dim=1) for a, b in itertools.combinations(grads, 2)])
    deg, _ = build_method("deg", beta=0.3).loss(ensemble, x, y)
    gal, _ = build_method("gal", lam=0.7).loss(ensemble, x, y)
    torch.testing.assert_close(deg, ce + 0.3 * cosines.mean(1).sum())
    torch.testing.assert_close(gal, ce + 0.7 * torch.logsumexp(cosines, 0).mean())


class FixedLogits(torch.nn.Module):
    """A member whose logits are given (one row per sample), so a method's terms can be worked out by hand."""

    def __init__(self, probabilities):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(probabilities, dtype=torch.float64).log())

    def forward(self, x):
        return self.logits


def test_deg_and_gal_against_closed_form_input_gradients():
    """Linear members z = W x + b: the per-sample input gradient of CE is W^T (softmax(z) - e_y),
    written out here rather than taken by autograd."""
    torch.manual_seed(0)
    members = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).double() for _ in range(3)]
    ensemble = Ensemble(members)
    x, y = torch.rand(5, 3, 2, 2, dtype=torch.float64), torch.tensor([0, 3, 1, 1, 2])
    flat, onehot = x.flatten(1), F.one_hot(y, 4).double()
    ce = sum(-(torch.log_softmax(flat @ m[1].weight.T + m[1].bias, 1) * onehot).sum(1).mean() for m in members)
    grads = [((flat @ m[1].weight.T + m[1].bias).softmax(1) - onehot) @ m[1].weight for m in members]
    cos = torch.stack([(a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)) for a, b in itertools.combinations(grads, 2)])
    deg, deg_logs = build_method("deg", beta=0.3).loss(ensemble, x, y)
    gal, gal_logs = build_method("gal", lam=0.7).loss(ensemble, x, y)
    torch.testing.assert_close(deg_logs["cos"], cos.mean(1).sum())
    torch.testing.assert_close(deg, ce + 0.3 * cos.mean(1).sum())
    torch.testing.assert_close(gal, ce + 0.7 * cos.exp().sum(0).log().mean())


def test_adp_by_hand():
    """One sample, true class 0, members' probabilities p1 = (.5, .3, .2) and p2 = (.2, .2, .6).
    ADP drops the true class (not the argmax: member 2's is class 2) and normalises the rest:
    n1 = (.3, .2)/sqrt(.13), n2 = (.2, .6)/sqrt(.4), cos = .18/sqrt(.052); det(G + 1e-6 I) =
    (1 + 1e-6)^2 - cos^2. Entropy of the mean (.35, .25, .4); CE = -log .5 - log .2."""
    ensemble = Ensemble([FixedLogits([[0.5, 0.3, 0.2]]), FixedLogits([[0.2, 0.2, 0.6]])])
    x, y = torch.zeros(1, 1), torch.tensor([0])
    loss, logs = build_method("adp", alpha=2.0, beta=0.5).loss(ensemble, x, y)
    cos = 0.18 / math.sqrt(0.052)
    log_det = math.log((1 + 1e-6) ** 2 - cos**2)
    entropy = -sum(p * math.log(p) for p in (0.35, 0.25, 0.4))
    ce = -math.log(0.5) - math.log(0.2)
    assert logs["log_det"].item() == pytest.approx(log_det, rel=1e-9)
    assert logs["entropy"].item() == pytest.approx(entropy, rel=1e-9)
    assert loss.item() == pytest.approx(ce - 2.0 * entropy - 0.5 * log_det, rel=1e-9)


def test_edlcm_method_equals_the_regularizer():
    ensemble, (x, y) = small_ensemble(), batch()
    ensemble.eval()
    loss, logs = build_method("edlcm").loss(ensemble, x, y)  # the defaults: every=16, whose first call regularizes
    terms = HvpCurvatureLoss().terms(list(ensemble.members), x, y)
    torch.testing.assert_close(loss, terms.ece + terms.total)
    exact = HvpCurvatureLoss(every=1).terms(list(ensemble.members), x, y)
    torch.testing.assert_close(terms.total, 16 * exact.total)  # the pull bound does not engage here
    terms = exact
    # The ablations' weighting, without the pull bound (beta=0.25 alone pulls harder than the CE here).
    only_r, _ = build_method("edlcm_lr", every=1, max_pull=None).loss(ensemble, x, y)
    torch.testing.assert_close(only_r, terms.ece + terms.l_r)
    only_g, logs = build_method("edlcm_lg", beta=0.25, every=1, max_pull=None).loss(ensemble, x, y)
    torch.testing.assert_close(only_g, terms.ece + 0.25 * terms.l_g)
    torch.testing.assert_close(logs["l_g"], terms.l_g)


def test_adp_terms():
    ensemble, (x, y) = small_ensemble(), batch()
    ensemble.eval()
    loss, logs = build_method("adp", alpha=2.0, beta=0.5).loss(ensemble, x, y)
    logs = {key: value.item() for key, value in logs.items()}
    torch.testing.assert_close(loss.item(), logs["ce"] - 2.0 * logs["entropy"] - 0.5 * logs["log_det"])
    probs = torch.stack([m(x).softmax(1) for m in ensemble.members]).mean(0)
    torch.testing.assert_close(logs["entropy"], -(probs * probs.log()).sum(1).mean().item())
    assert logs["log_det"] <= 0  # det of a Gram matrix of unit vectors is at most 1


def test_pdd_keep_probabilities_follow_the_rule():
    """Features placed in known bins (4 bins on [0, 4]: bin = floor(value)); 40,000 identical rows
    give 40,000 independent masks, so each empirical keep rate is within 5 sigma <= 0.0125 of its
    probability. Concatenated counts per bin: 4, 5, 1, 2, so member 0 gets bin 1 and member 1 bin 0.
    Off its bin a feature is kept with keep_other * (1 - n / F), n = how many of the member's own
    F = 6 features share its bin."""
    rows = 40_000
    member0 = torch.tensor([0.0, 0.0, 0.0, 1.0, 2.0, 3.0]).expand(rows, 6)  # bins 0 0 0 1 2 3
    member1 = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 4.0]).expand(rows, 6)  # bins 0 1 1 1 1 3
    torch.manual_seed(0)
    masks = parallel_diversified_dropout_mask([member0, member1], bins=4, keep_top=0.9, keep_other=0.5)
    expected0 = [0.5 * (1 - 3 / 6)] * 3 + [0.9] + [0.5 * (1 - 1 / 6)] * 2
    expected1 = [0.9] + [0.5 * (1 - 4 / 6)] * 4 + [0.5 * (1 - 1 / 6)]
    for mask, expected in zip(masks, (expected0, expected1)):
        torch.testing.assert_close(mask.mean(0), torch.tensor(expected), rtol=0, atol=0.0125)


def test_pdd_masks_follow_the_bin_rule():
    torch.manual_seed(0)
    features = [torch.randn(64, 40) for _ in range(3)]
    keep_rates = torch.stack(
        [torch.stack(parallel_diversified_dropout_mask(features, 10, 0.9, 0.1)) for _ in range(200)]
    ).mean(0)
    # Every kept probability is either keep_top (0.9) or at most keep_other (0.1).
    assert ((keep_rates > 0.8) | (keep_rates < 0.2)).float().mean() > 0.97
    assert (keep_rates > 0.8).any(dim=2).all()  # each member keeps its own bin for every sample
    with pytest.raises(ValueError, match="same shape"):
        parallel_diversified_dropout_mask([torch.randn(4, 5), torch.randn(4, 6)], 10, 0.9, 0.1)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        build_method("magic")
