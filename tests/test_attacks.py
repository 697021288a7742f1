"""Our attacks against torchattacks (an independent implementation) on a small trained ensemble."""

import importlib.util

import pytest
import torch
from torch.utils.data import DataLoader

from edlcm_ext.evaluation.attacks import ATTACKS, build_attack, expand_attack_names
from edlcm_ext.evaluation.attacks.apgd import checkpoints, steps_to_halve
from edlcm_ext.evaluation.attacks.apgd_dlr import dlr_loss
from edlcm_ext.evaluation.attacks.square import square_fraction
from edlcm_ext.evaluation.evaluate import robust_accuracy
from edlcm_ext.training.config import TrainConfig
from edlcm_ext.training.data import load_dataset
from edlcm_ext.training.trainer import train

EPS = 0.1
# torchattacks is a test dependency (pip install .[test]); the GPU machines' image lacks it.
needs_torchattacks = pytest.mark.skipif(
    importlib.util.find_spec("torchattacks") is None, reason="torchattacks is not installed"
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("attacks")
    ensemble = train(
        TrainConfig(method="base", dataset="digits", epochs=4, out_dir=str(out), progress=False, device="cpu")
    ).ensemble.eval()
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
    theirs = accuracy(
        model, torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=1000, p_init=0.8, seed=0)(x, y), y
    )
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
    before = [t.detach().clone() for t in model.state_dict().values()]  # parameters and BN running statistics
    x_adv = build_attack(name, model, EPS)(x[:32], y[:32])
    assert model.training  # mode restored
    assert (x_adv - x[:32]).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    model.eval()


class FailsOnCall(torch.nn.Module):
    """Wraps a model; its forward raises on the given call, like an assertion failing mid-attack."""

    def __init__(self, model, failing_call):
        super().__init__()
        self.model, self.failing_call, self.calls = model, failing_call, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.failing_call:
            raise AssertionError("failure inside the attack")
        return self.model(x)


@pytest.mark.parametrize("name", ["pgd", "apgd", "square"])
def test_a_failing_attack_still_restores_mode_and_buffers(trained, name):
    model, x, y = trained
    wrapped = FailsOnCall(model, failing_call=3).train()
    before = [t.detach().clone() for t in model.state_dict().values()]
    with pytest.raises(AssertionError, match="failure inside the attack"):
        build_attack(name, wrapped, EPS)(x[:16], y[:16])
    assert wrapped.training and model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    model.eval()


def linear_two_class_model(features):
    """logits = W x with 2 classes: the input gradient of CE is p_other * (w_other - w_y), whose sign
    is sign(w_other - w_y) everywhere, so signed-gradient attacks have closed-form iterates."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, 2, bias=False))
    return model, model[1].weight.detach()


def test_bim_iterates_in_closed_form():
    """BIM from x moves every pixel by step_size * sign(w_other - w_y) per step, clipped to the
    eps-ball and [0, 1]: after k steps x + min(k * step_size, eps) * sign, then the box."""
    torch.manual_seed(0)
    model, weight = linear_two_class_model(8)
    x = torch.tensor([[0.5, 0.96, 0.02, 0.5, 0.3, 0.7, 0.99, 0.01], [0.4] * 8]).view(2, 1, 2, 4)
    y = torch.tensor([0, 1])
    direction = torch.stack([(weight[1] - weight[0]).sign(), (weight[0] - weight[1]).sign()]).view_as(x)
    for steps, step_size in ((2, 0.03), (5, 0.03), (10, 0.01)):
        x_adv = build_attack("bim", model, 0.1, steps=steps, step_size=step_size)(x, y)
        expected = (x + min(steps * step_size, 0.1) * direction).clamp(0, 1)
        torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)


class Sine(torch.nn.Module):
    def forward(self, x):
        return torch.sin(x)


def rugged_model_and_batch():
    """logits = V sin(30 W x): a loss surface with many local maxima inside a small eps-ball, so
    random starts lead to different points; labels are the clean predictions (all correct)."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 16), Sine(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        model[1].weight.mul_(30)
        x = torch.rand(40, 1, 2, 3)
        return model, x, model(x).argmax(1)


def test_pgd_restarts_keep_per_sample_the_best_run():
    """restarts=3 equals three single runs drawn from the same random stream, combined per sample:
    a run that misclassifies beats one that does not, then the higher loss wins."""
    model, x, y = rugged_model_and_batch()
    torch.manual_seed(7)
    combined = build_attack("pgd", model, 0.05, steps=3, restarts=3)(x, y)
    torch.manual_seed(7)
    runs = [build_attack("pgd", model, 0.05, steps=3)(x, y) for _ in range(3)]
    with torch.no_grad():
        outputs = [model(r) for r in runs]
    losses = torch.stack([torch.nn.functional.cross_entropy(o, y, reduction="none") for o in outputs])
    fooled = torch.stack([o.argmax(1) != y for o in outputs])
    score = fooled.double() * 1e6 + losses.double()  # fooled first, then loss
    expected = torch.stack(runs)[score.argmax(0), torch.arange(40)]
    assert len({tuple(r.flatten().tolist()) for r in runs}) == 3  # the runs differ
    torch.testing.assert_close(combined, expected, rtol=0, atol=0)


def test_apgd_restarts_keep_the_first_fooling_run():
    model, x, y = rugged_model_and_batch()
    torch.manual_seed(8)
    combined = build_attack("apgd", model, 0.05, iterations=2, restarts=3)(x, y)
    torch.manual_seed(8)
    attack = build_attack("apgd", model, 0.05, iterations=2)
    runs = [attack._run(x, y) for _ in range(3)]
    expected, done = x.clone(), torch.zeros(40, dtype=torch.bool)
    for candidate, fooled in runs:
        expected[fooled & ~done], done = candidate[fooled & ~done], done | fooled
    assert runs[0][1].sum() < done.sum()  # later restarts fooled samples the first did not
    torch.testing.assert_close(combined, expected, rtol=0, atol=0)


def test_apgd_halves_on_either_condition():
    """rho = 0.75 over 10 steps since the last checkpoint: 7 increases halve, 8 do not (condition 1);
    an unchanged step size and best loss halve even with enough increases (condition 2)."""
    increases = torch.tensor([7.0, 8.0, 8.0, 8.0])
    step = torch.tensor([0.1, 0.1, 0.1, 0.05])
    step_at_last_mark = torch.tensor([0.1, 0.1, 0.1, 0.1])
    best_loss = torch.tensor([2.0, 2.0, 1.0, 1.0])
    loss_at_last_mark = torch.tensor([1.0, 1.0, 1.0, 1.0])
    halve = steps_to_halve(increases, 10, 0.75, step, step_at_last_mark, best_loss, loss_at_last_mark)
    assert halve.tolist() == [True, False, True, False]


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


def test_autoattack_without_torchattacks_says_it_is_an_optional_dependency(trained):
    from unittest import mock

    model, _, _ = trained
    with mock.patch("importlib.util.find_spec", return_value=None):
        with pytest.raises(ValueError, match="needs torchattacks"):
            build_attack("autoattack", model, EPS)
