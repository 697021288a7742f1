"""Each training method's loss: finite, differentiable, and equal to its formula on a small case."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from edlcm_ext import HvpCurvatureLoss
from edlcm_ext.ensemble import Ensemble
from edlcm_ext.methods import METHODS, build_method
from edlcm_ext.methods.pdd import parallel_diversified_dropout_mask
from edlcm_ext.models import build_model


def small_ensemble(members=3):
    return Ensemble([build_model("small_cnn", 10, in_channels=1) for _ in range(members)]).double()


def batch():
    return torch.rand(8, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (8,))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_is_finite_and_reaches_every_member(name):
    ensemble, (x, y) = small_ensemble(), batch()
    loss, logs = build_method(name).loss(ensemble, x, y)
    assert loss.dim() == 0 and torch.isfinite(loss) and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in logs.values())
    loss.backward()
    for member in ensemble.members:
        assert member.classifier.weight.grad is not None and member.classifier.weight.grad.abs().sum() > 0


def input_gradients(ensemble, x, y):
    x = x.clone().requires_grad_(True)
    return [torch.autograd.grad(F.cross_entropy(m(x), y), x)[0].flatten(1) for m in ensemble.members]


def test_deg_and_gal_follow_their_formulas():
    ensemble, (x, y) = small_ensemble(), batch()
    ensemble.eval()  # deterministic BatchNorm so both computations see the same function
    ce = sum(F.cross_entropy(m(x), y) for m in ensemble.members)
    grads = input_gradients(ensemble, x, y)
    cosines = torch.stack([F.cosine_similarity(a, b, dim=1) for a, b in itertools.combinations(grads, 2)])
    deg, _ = build_method("deg", beta=0.3).loss(ensemble, x, y)
    gal, _ = build_method("gal", lam=0.7).loss(ensemble, x, y)
    torch.testing.assert_close(deg, ce + 0.3 * cosines.mean(1).sum())
    torch.testing.assert_close(gal, ce + 0.7 * torch.logsumexp(cosines, 0).mean())


def test_edlcm_method_equals_the_regularizer():
    ensemble, (x, y) = small_ensemble(), batch()
    ensemble.eval()
    loss, logs = build_method("edlcm").loss(ensemble, x, y)
    terms = HvpCurvatureLoss().terms(list(ensemble.members), x, y)
    torch.testing.assert_close(loss, terms.ece + terms.total)
    only_r, _ = build_method("edlcm_lr").loss(ensemble, x, y)
    torch.testing.assert_close(only_r, terms.ece + terms.l_r)


def test_adp_terms():
    ensemble, (x, y) = small_ensemble(), batch()
    ensemble.eval()
    loss, logs = build_method("adp", alpha=2.0, beta=0.5).loss(ensemble, x, y)
    logs = {key: value.item() for key, value in logs.items()}
    torch.testing.assert_close(loss.item(), logs["ce"] - 2.0 * logs["entropy"] - 0.5 * logs["log_det"])
    probs = torch.stack([m(x).softmax(1) for m in ensemble.members]).mean(0)
    torch.testing.assert_close(logs["entropy"], -(probs * probs.log()).sum(1).mean().item())
    assert logs["log_det"] <= 0  # det of a Gram matrix of unit vectors is at most 1


def test_pdd_masks_follow_the_bin_rule():
    torch.manual_seed(0)
    features = [torch.randn(64, 40) for _ in range(3)]
    keep_rates = torch.stack([torch.stack(parallel_diversified_dropout_mask(features, 10, 0.9, 0.1)) for _ in range(200)]).mean(0)
    # Every kept probability is either keep_top (0.9) or at most keep_other (0.1).
    assert ((keep_rates > 0.8) | (keep_rates < 0.2)).float().mean() > 0.97
    assert (keep_rates > 0.8).any(dim=2).all()  # each member keeps its own bin for every sample
    with pytest.raises(ValueError, match="same shape"):
        parallel_diversified_dropout_mask([torch.randn(4, 5), torch.randn(4, 6)], 10, 0.9, 0.1)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        build_method("magic")
