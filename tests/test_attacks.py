"""Our attacks against torchattacks (an independent implementation) on a small trained ensemble."""

import importlib.util

import pytest
import torch
from torch.utils.data import DataLoader

from edlcm_ext.attacks import ATTACKS, build_attack, expand_attack_names
from edlcm_ext.attacks.apgd import checkpoints
from edlcm_ext.attacks.apgd_dlr import dlr_loss
from edlcm_ext.attacks.square import square_fraction
from edlcm_ext.data import load_dataset
from edlcm_ext.evaluate import robust_accuracy
from edlcm_ext.train import TrainConfig, train

EPS = 0.1
# torchattacks is a test dependency (pip install .[test]); the GPU machines' image lacks it.
needs_torchattacks = pytest.mark.skipif(importlib.util.find_spec("torchattacks") is None, reason="torchattacks is not installed")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("attacks")
    ensemble = train(TrainConfig(method="base", dataset="digits", epochs=4, out_dir=str(out), progress=False, device="cpu")).ensemble.eval()
    test_set, _ = load_dataset("digits", None, train=False)
    x, y = test_set.tensors
    return ensemble, x[:200], y[:200]


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@needs_torchattacks
def test_fgsm_equals_torchattacks(trained):
    import torchattacks

    model, x, y = trained
    ours = build_attack("fgsm", model, EPS)(x, y)
    theirs = torchattacks.FGSM(model, eps=EPS)(x, y)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@needs_torchattacks
def test_pgd_at_least_as_strong_as_torchattacks(trained):
    import torchattacks

    model, x, y = trained
    torch.manual_seed(1)
    ours = accuracy(model, build_attack("pgd", model, EPS, steps=20, step_size=EPS / 8)(x, y), y)
    theirs = accuracy(model, torchattacks.PGD(model, eps=EPS, alpha=EPS / 8, steps=20, random_start=True)(x, y), y)
    assert ours <= theirs + 0.02, (ours, theirs)
    assert ours < accuracy(model, x, y) - 0.05  # the attack does something


@needs_torchattacks
@pytest.mark.parametrize("name, loss, seed", [("apgd", "ce", 2), ("apgd-dlr", "dlr", 3)])
def test_apgd_at_least_as_strong_as_torchattacks(trained, name, loss, seed):
    import torchattacks

    model, x, y = trained
    torch.manual_seed(seed)
    ours = accuracy(model, build_attack(name, model, EPS, iterations=50)(x, y), y)
    theirs = accuracy(model, torchattacks.APGD(model, norm="Linf", eps=EPS, steps=50, loss=loss, seed=0)(x, y), y)
    # Over random starts (seeds 0-2) each implementation's accuracy here moves by up to 0.025 (5 of
    # 200 samples), ours and theirs alike; a real weakness would show as a larger gap.
    assert ours <= theirs + 0.03, (ours, theirs)
    assert ours < accuracy(model, x, y) - 0.05


@needs_torchattacks
def test_square_at_least_as_strong_as_torchattacks(trained):
    import torchattacks

    model, x, y = trained
    torch.manual_seed(4)
    ours = accuracy(model, build_attack("square", model, EPS, queries=1000)(x, y), y)
    theirs = accuracy(model, torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=1000, p_init=0.8, seed=0)(x, y), y)
    assert ours <= theirs + 0.03, (ours, theirs)  # random search: seed spread as for APGD above
    assert ours < accuracy(model, x, y) - 0.05


def test_square_schedule_halves_the_fraction_at_the_paper_points():
    assert [square_fraction(0.8, q, 10_000) for q in (1, 11, 51, 201, 9999)] == [0.8, 0.4, 0.2, 0.1, 0.8 / 512]
    assert square_fraction(0.8, 500, 1000) == square_fraction(0.8, 5000, 10_000)  # rescaled to the budget


def test_dlr_loss_by_hand():
    # z = (3, 1, 2, 0), y = 1: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3) = -(1 - 3) / (3 - 1) = 1
    # z = (0, 5, 1, 4), y = 1: -(5 - 4) / (5 - 1) = -0.25; shift and scale invariant
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 5.0, 1.0, 4.0]])
    y = torch.tensor([1, 1])
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([1.0, -0.25]))
    torch.testing.assert_close(dlr_loss(2 * z - 7, y), torch.tensor([1.0, -0.25]))
    with pytest.raises(ValueError, match="at least 3 classes"):
        dlr_loss(z[:, :2], y)


def test_presets_expand_and_unknown_names_list_the_valid_ones():
    assert expand_attack_names(["fgsm", "strong", "apgd"]) == ["fgsm", "apgd", "apgd-dlr", "square"]
    with pytest.raises(ValueError, match=r"unknown attack 'cw'; choose from \['apgd', 'apgd-dlr'"):
        expand_attack_names(["cw"])


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attacks_stay_in_the_ball_and_leave_the_model_alone(trained, name):
    model, x, y = trained
    model.train()
    model.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    x_adv = build_attack(name, model, EPS)(x[:32], y[:32])
    assert model.training  # mode restored
    assert (x_adv - x[:32]).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()


def test_apgd_checkpoints_match_the_paper():
    # p_j: 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020)
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


def test_robust_accuracy_reports_all_clean_correct_and_worst_case(trained):
    model, x, y = trained
    loader = DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100)
    result = robust_accuracy(model, loader, ["fgsm", "pgd"], [0.0, EPS], torch.device("cpu"), progress=False)
    assert result["samples"] == 200
    assert result["attacks"]["fgsm"][0.0]["all"] == pytest.approx(result["clean"])
    assert result["attacks"]["pgd"][0.0]["clean_correct"] == pytest.approx(1.0)
    worst = result["worst"][EPS]["all"]
    assert worst <= min(result["attacks"][a][EPS]["all"] for a in ("fgsm", "pgd")) + 1e-9


def test_bad_eps_and_inputs_are_rejected(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="eps must be >= 0"):
        build_attack("fgsm", model, -0.1)
    with pytest.raises(ValueError, match="x must hold images in \\[0, 1\\]"):
        build_attack("fgsm", model, 0.1)(x * 2 + 0.1, y)
    with pytest.raises(ValueError, match="attack must be one of"):
        build_attack("cw", model, 0.1)
