"""Evaluation: TSR (eq 12), masking warnings, and `edlcm eval` on a trainer checkpoint."""

import copy
import dataclasses
import json
import os
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edlcm_ext import HvpCurvatureLoss
from edlcm_ext.cli import main as cli_main
from edlcm_ext.evaluation import eval_job, evaluate, sanity
from edlcm_ext.evaluation.curvature import (
    curvature_diagnostics,
    l_r_by_correctness,
    largest_hessian_eigenvalue,
    term_gradient_norms,
)
from edlcm_ext.evaluation.evaluate import attack_flags, transfer_matrix, transferability_success_rate
from edlcm_ext.training.config import TrainConfig
from edlcm_ext.training.data import load_dataset
from edlcm_ext.training.trainer import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    ensemble = train(
        TrainConfig(method="base", dataset="digits", epochs=4, out_dir=str(out), progress=False, device="cpu")
    ).ensemble
    return ensemble.eval(), out / "checkpoint.pt"


@pytest.fixture(scope="module")
def loader():
    test_set, _ = load_dataset("digits", None, train=False)
    x, y = test_set.tensors
    return DataLoader(TensorDataset(x[:128], y[:128]), batch_size=64)


def test_tsr_formula_on_a_hand_made_matrix():
    matrix = torch.tensor([[0.1, 0.5, 0.7], [0.6, 0.2, 0.9], [0.4, 0.8, 0.0]])
    by_hand = (100 * (0.5 + 0.3 + 0.4 + 0.1 + 0.6 + 0.2)) / 3
    assert transferability_success_rate(matrix) == pytest.approx(by_hand)


def test_tsr_of_identical_members_equals_the_hand_computed_value(trained_run, loader):
    ensemble, _ = trained_run
    member = ensemble.members[0]
    clones = [copy.deepcopy(member) for _ in range(3)]
    matrix = transfer_matrix(clones, loader, 0.1, torch.device("cpu"), progress=False)
    for i in range(3):  # identical members: each source's examples fool every member alike
        assert torch.allclose(matrix[i], matrix[i, i].expand(3))
    by_hand = sum((3 - 1) * 100 * (1 - matrix[i, i].item()) for i in range(3)) / 3
    assert transferability_success_rate(matrix) == pytest.approx(by_hand)
    assert 0 < by_hand < 200


class ConstantClassifier(nn.Module):
    """Always predicts class 0, with zero input gradient: attacks crafted on it leave images unchanged."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 10, device=x.device)
        logits[:, 0] = 1.0
        return logits + 0 * x.flatten(1).sum(dim=1, keepdim=True)


def test_transfer_matrix_rows_are_sources_and_columns_targets(trained_run, loader):
    """Member 0 is a real model, member 1 a constant one: examples crafted on 1 are the clean images,
    so entry (1, 0) is member 0's clean accuracy, and entry (0, 1) the share of class-0 labels; a
    transposed matrix swaps them."""
    ensemble, _ = trained_run
    real, constant = copy.deepcopy(ensemble.members[0]), ConstantClassifier()
    matrix = transfer_matrix([real, constant], loader, 0.1, torch.device("cpu"), progress=False)
    labels = torch.cat([y for _, y in loader])
    with torch.no_grad():
        clean = torch.cat([(real(x).argmax(1) == y) for x, y in loader]).float().mean().item()
    assert matrix[1, 0].item() == pytest.approx(clean) and clean > 0.8
    assert matrix[0, 1].item() == pytest.approx((labels == 0).float().mean().item())
    assert matrix[0, 0] < clean - 0.2  # the white-box attack on member 0 works


def test_worst_case_is_a_per_sample_and_over_attacks(loader):
    """Two attacks that each break a different half of the samples: each alone leaves 50%, the
    worst case must be 0% (a min over attacks would say 50%)."""
    samples = sum(len(y) for _, y in loader)
    half = torch.arange(samples) < samples // 2
    flags = {"fgsm": half, "pgd": ~half}
    model = ConstantClassifier()
    with (
        mock.patch.object(evaluate, "attack_flags", lambda model, loader, attack, eps, *a, **k: flags[attack]),
        mock.patch.object(evaluate, "correct_flags", lambda *a, **k: torch.ones(samples, dtype=torch.bool)),
    ):
        result = evaluate.robust_accuracy(model, loader, ["fgsm", "pgd"], [0.1], torch.device("cpu"), progress=False)
    assert result["attacks"]["fgsm"][0.1]["all"] == pytest.approx(0.5) and result["attacks"]["pgd"][0.1][
        "all"
    ] == pytest.approx(0.5)
    assert result["worst"][0.1]["all"] == 0.0


def test_masking_warning_when_square_breaks_what_the_gradient_attacks_left():
    def result(square):  # Square's row: robust to the gradient attacks (worst case 0.45) and to Square
        cells = {"fgsm": 0.6, "apgd": 0.5, "square": square}
        return {"attacks": {a: {0.1: {"all": v}} for a, v in cells.items()}, "worst_gradient": {0.1: {"all": 0.45}}}

    assert any("square (no gradients) breaks 0.150 of the samples" in m for m in sanity.check_white_box(result(0.3)))
    assert not sanity.check_white_box(result(0.44))


def test_square_runs_only_on_the_samples_the_gradient_attacks_left(trained_run, loader):
    """As AutoAttack: Square is given only the clean-correct samples that every attack before it missed,
    and its flags are those samples' fate; the worst case equals running it on everything."""
    model = trained_run[0]
    clean = evaluate.correct_flags(model, loader, torch.device("cpu"))
    given = []
    real = evaluate.attack_flags

    def spy(model, loader, attack, *args, **kwargs):
        if attack == "square":
            given.append([int(i) for i in loader.dataset.indices])
        return real(model, loader, attack, *args, **kwargs)

    with mock.patch.object(evaluate, "attack_flags", side_effect=spy):
        flags = evaluate.white_box_flags(
            model,
            loader,
            clean,
            ["fgsm", "square"],
            0.1,
            torch.device("cpu"),
            {"square": {"queries": 20}},
            progress=False,
        )
    left = (clean & flags["fgsm"]).nonzero().squeeze(1).tolist()
    assert given == [left] and 0 < len(left) < len(clean)
    assert not (flags["square"] & ~(clean & flags["fgsm"])).any()


class StepFunctionModel(nn.Module):
    """A deliberately gradient-masked model: the input passes through a step function."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(torch.round(x * 4) / 4)


def masking_warnings(model, loader):
    fraction = sanity.zero_gradient_fraction(model, loader, torch.device("cpu"))
    large = attack_flags(
        model, loader, "pgd", 0.3, torch.device("cpu"), options={"steps": 50, "step_size": 0.015}, progress=False
    )
    return sanity.check_zero_gradients(fraction) + sanity.check_large_eps(large.float().mean().item(), 0.3)


def test_sanity_warnings_fire_on_a_masked_model_and_not_on_a_normal_one(trained_run, loader):
    ensemble, _ = trained_run
    masked = masking_warnings(StepFunctionModel(ensemble).eval(), loader)
    assert any("zero input gradient" in m for m in masked) and any("large eps" in m for m in masked)
    assert masking_warnings(ensemble, loader) == []


def test_white_box_checks_flag_non_monotone_and_weak_iterative_attacks():
    cell = lambda v: {"all": v, "clean_correct": v}  # noqa: E731
    result = {"attacks": {"fgsm": {0.01: cell(0.5), 0.02: cell(0.3)}, "pgd": {0.01: cell(0.6), 0.02: cell(0.7)}}}
    messages = sanity.check_white_box(result)
    assert any("rises" in m and m.startswith("pgd") for m in messages)
    assert any("weaker than FGSM at eps=0.01" in m for m in messages)
    sound = {"attacks": {"fgsm": {0.01: cell(0.5), 0.02: cell(0.3)}, "pgd": {0.01: cell(0.4), 0.02: cell(0.1)}}}
    assert sanity.check_white_box(sound) == []
    assert sanity.check_black_box({0.01: cell(0.4)}, {"vgg": {"pgd": {0.01: cell(0.2)}}})
    assert not sanity.check_black_box({0.01: cell(0.4)}, {"vgg": {"pgd": {0.01: cell(0.6)}}})


# The 4-epoch digits model is weak enough that the sanity checks flag it; what they say is tested apart.
@pytest.mark.filterwarnings("ignore:.*(weaker than FGSM|beats the white-box worst case):UserWarning")
def test_eval_cli_writes_table_plots_and_resumes_from_cache(trained_run, tmp_path, capsys):
    _, checkpoint = trained_run
    surrogate = tmp_path / "surrogate" / "checkpoint.pt"
    surrogate.parent.mkdir()
    shutil.copyfile(checkpoint, surrogate)
    args = [
        "eval",
        "--checkpoint",
        str(checkpoint),
        "--checkpoint",
        str(checkpoint),
        "--name",
        "a",
        "--name",
        "b",
        "--attacks",
        "fgsm,pgd,apgd",
        "--eps",
        "0.05,0.1",
        "--max-samples",
        "64",
        "--tsr-eps",
        "0.1",
        "--surrogate",
        str(surrogate),
        "--apgd-iterations",
        "5",
        "--out-dir",
        str(tmp_path),
        "--no-progress",
        "--device",
        "cpu",
        "--curvature",
        "32",
    ]
    assert cli_main(args) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| Attack | eps | a | b |" in table and "| APGD-CE | 0.1 |" in table and "TSR (PGD)" in table
    assert "| PGD-10 (paper's, weak) | 0.1 |" in table and "| curvature: mean |u| (eq 9) | - |" in table
    for name in ("robustness.png", "transfer_a_eps0.1.png", "transfer_b_eps0.1.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    saved = json.loads((tmp_path / "results.json").read_text())["results"]
    assert saved["a"]["samples"] == 64 and set(saved["a"]["attacks"]) == {"fgsm", "pgd", "apgd"}
    # A second run recomputes nothing: every per-sample result comes from the cache.
    with (
        mock.patch.object(evaluate, "attack_flags", side_effect=AssertionError("recomputed")),
        mock.patch.object(eval_job, "craft", side_effect=AssertionError("recomputed")),
        mock.patch.object(eval_job, "transfer_matrix", side_effect=AssertionError("recomputed")),
        mock.patch.object(eval_job, "curvature_diagnostics", side_effect=AssertionError("recomputed")),
    ):
        assert cli_main(args) == 0
    assert saved["a"]["curvature"]["samples"] == 32
    assert json.loads((tmp_path / "results.json").read_text())["results"] == saved
    # A retrained surrogate (same path, new content) invalidates the black-box results only; a copy of
    # the checkpoint elsewhere (another clone) keeps its cached results.
    retrained = torch.load(surrogate, weights_only=True)
    retrained["epoch"] += 1
    torch.save(retrained, surrogate)
    with (
        mock.patch.object(evaluate, "attack_flags", side_effect=AssertionError("recomputed")),
        mock.patch.object(eval_job, "craft", wraps=eval_job.craft) as craft,
    ):
        assert cli_main(args) == 0
    assert craft.call_count == 3 * 2  # each attack and eps once, shared by both checkpoints
    # --black-box-attacks: only those are crafted on the surrogate, the white-box rows are unchanged
    with (
        mock.patch.object(evaluate, "attack_flags", side_effect=AssertionError("recomputed")),
        mock.patch.object(eval_job, "craft", wraps=eval_job.craft) as craft,
    ):
        assert cli_main(args + ["--black-box-attacks", "fgsm"]) == 0
    assert craft.call_count == 0  # read from the cache of the run above
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(results["a"]["black_box"]["small_cnnx3"]) == {"fgsm"} and set(results["a"]["attacks"]) == {
        "fgsm",
        "pgd",
        "apgd",
    }


def test_power_iteration_finds_the_largest_eigenvalue_of_a_known_hessian():
    """Per-sample loss 0.5 x^T A_b x has Hessian A_b: eigenvalues chosen by hand, one dominant."""
    torch.manual_seed(0)
    dims, eigenvalues = (
        6,
        torch.tensor([[5.0, 1.0, 0.5, -0.3, 0.2, 0.1], [-0.4, 2.5, 0.9, 0.3, 0.2, -0.1]], dtype=torch.float64),
    )
    bases = [torch.linalg.qr(torch.randn(dims, dims, dtype=torch.float64))[0] for _ in range(2)]
    hessians = torch.stack([q @ torch.diag(e) @ q.T for q, e in zip(bases, eigenvalues)])

    def quadratic(x):
        flat = x.flatten(1)
        return 0.5 * torch.einsum("bi,bij,bj->b", flat, hessians, flat)

    x = torch.randn(2, 2, 3, dtype=torch.float64)
    found = largest_hessian_eigenvalue(quadratic, x, iterations=100)
    torch.testing.assert_close(found, torch.tensor([5.0, 2.5], dtype=torch.float64), rtol=1e-6, atol=1e-8)


def test_curvature_diagnostics_in_eval_report(trained_run, loader):
    model, _ = trained_run
    members = list(model.members)
    stats = curvature_diagnostics(members, loader, torch.device("cpu"), iterations=5, max_samples=100)
    assert stats["samples"] == 100 and stats["lambda_max"]["mean"] > 0 and stats["u_norm"]["mean"] > 0
    assert -1 <= stats["u_cosine"]["mean"] <= 1
    assert all(not m.training for m in members)  # mode restored (the fixture's ensemble is in eval mode)


def _flags_by_attack_budget(ensemble, loader, attack, eps, device, options=None, progress=False):
    """Stand-in for attack_flags: PGD-10 leaves every sample robust, the sanity PGD-50 none, so a
    result read from the other attack's cache entry shows."""
    return torch.full((len(loader.dataset),), (options or {}).get("steps") != 50)


def test_cached_results_are_keyed_by_everything_that_changes_them(trained_run, tmp_path):
    _, checkpoint = trained_run
    settings = eval_job.EvalSettings(
        checkpoints=[str(checkpoint)],
        attacks=["pgd"],
        eps=[0.3],
        large_eps=0.3,
        max_samples=64,
        out_dir=str(tmp_path),
        progress=False,
        device="cpu",
    )

    def evaluate_counting(**changes):
        flags = mock.Mock(side_effect=_flags_by_attack_budget)
        with mock.patch.object(eval_job, "attack_flags", flags), mock.patch.object(evaluate, "attack_flags", flags):
            result = eval_job.evaluate_one(
                "a", str(checkpoint), dataclasses.replace(settings, **changes), torch.device("cpu"), {}
            )
        return result, flags.call_count

    result, calls = evaluate_counting()
    # PGD-10 at eps 0.3 and the sanity PGD-50 at large_eps 0.3 are two attacks with two entries.
    assert calls == 2 and result["attacks"]["pgd"][0.3]["all"] == 1.0 and result["large_eps"]["all"] == 0.0
    assert evaluate_counting()[1] == 0  # the same evaluation again: all from the cache
    assert evaluate_counting(pgd_restarts=2)[1] == 2  # another attack budget
    assert evaluate_counting(max_samples=32)[1] == 2  # other test images


def _write_image_folder(root, swap_test_labels=False):
    """A two-class ImageFolder tree of 8x8 images: class "bright" light, "dark" dark, plus noise.
    ``swap_test_labels`` files each test image under the other class."""
    generator = np.random.default_rng(0)
    for split, count in (("train", 32), ("test", 8)):
        for label, level in (("bright", 200), ("dark", 50)):
            folder = (
                root
                / split
                / ({"bright": "dark", "dark": "bright"}[label] if swap_test_labels and split == "test" else label)
            )
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                pixels = np.clip(level + generator.integers(-40, 40, size=(8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{label}_{k}.png")
    return str(root)


def test_cli_trains_and_evaluates_an_image_folder_with_its_default_eps_and_cache_dir(tmp_path):
    data = _write_image_folder(tmp_path / "data")
    run = tmp_path / "run"
    assert (
        cli_main(
            [
                "train",
                "--method",
                "base",
                "--dataset",
                "imagefolder",
                "--data-dir",
                data,
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--out-dir",
                str(run),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    cache, out = tmp_path / "cache", tmp_path / "eval"
    args = [
        "eval",
        "--checkpoint",
        str(run / "checkpoint.pt"),
        "--attacks",
        "fgsm",
        "--large-eps",
        "0",
        "--out-dir",
        str(out),
        "--cache-dir",
        str(cache),
        "--device",
        "cpu",
        "--no-progress",
    ]
    assert cli_main(args) == 0
    saved = json.loads((out / "results.json").read_text())["results"]["base"]
    assert saved["samples"] == 16 and set(saved["attacks"]["fgsm"]) == {
        f"{e:g}" for e in eval_job.DEFAULT_EPS["imagefolder"]
    }
    assert os.listdir(cache) and not (out / "flags").exists()  # per-sample results went to --cache-dir only
    # --data-dir replaces the checkpoint's test images: the same files under swapped labels (two
    # classes, so every correct prediction becomes wrong) must be evaluated, not read from the cache.
    swapped = _write_image_folder(tmp_path / "swapped", swap_test_labels=True)
    assert cli_main(args + ["--data-dir", swapped]) == 0
    relabelled = json.loads((out / "results.json").read_text())["results"]["base"]
    assert relabelled["clean"] == pytest.approx(1 - saved["clean"])


def test_term_gradient_norms_are_each_terms_weight_gradient():
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3)).double() for _ in range(2)]
    x, y = torch.rand(8, 3, 2, 2, dtype=torch.float64), torch.randint(0, 3, (8,))
    mean = term_gradient_norms(models, x, y, HvpCurvatureLoss(every=1, alpha=1.0, beta=0.5, reduction="mean"))
    # the CE's norm from a plain backward of the members' summed batch-mean CE
    for m in models:
        m.zero_grad()
    sum(nn.functional.cross_entropy(m(x), y) for m in models).backward()
    direct = torch.sqrt(sum((p.grad**2).sum() for m in models for p in m.parameters()))
    assert mean["grad_ce"] == pytest.approx(float(direct), rel=1e-12)
    # alpha and beta scale their own term's value and gradient, and only theirs; "sum" is B times "mean" for L_r
    scaled = term_gradient_norms(models, x, y, HvpCurvatureLoss(every=1, alpha=3.0, beta=2.0, reduction="per_sample"))
    assert scaled["grad_alpha_l_r"] == pytest.approx(3.0 * 8 * mean["grad_alpha_l_r"], rel=1e-9)
    assert scaled["alpha_l_r"] == pytest.approx(3.0 * 8 * mean["alpha_l_r"], rel=1e-9)
    assert scaled["grad_beta_l_g"] == pytest.approx(4.0 * mean["grad_beta_l_g"], rel=1e-9)
    assert scaled["grad_ce"] == pytest.approx(mean["grad_ce"], rel=1e-12)
    assert mean["grad_alpha_l_r"] > 0 and mean["grad_beta_l_g"] > 0


def test_l_r_by_correctness_splits_sum_u_squared_by_each_members_own_correctness():
    """Against u written here (input gradients at x and at x + h g by autograd, per member) and each
    member's argmax: the misclassified fraction, their share of sum |u|^2, and the mean ratio."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3)).double() for _ in range(2)]
    batches = [(torch.rand(16, 3, 2, 2, dtype=torch.float64), torch.randint(0, 3, (16,))) for _ in range(2)]
    h, squares, wrong_flags = 0.2, [], []
    for x, y in batches:
        for model in models:

            def input_gradient(z, model=model, y=y):
                z = z.detach().requires_grad_(True)
                return torch.autograd.grad(nn.functional.cross_entropy(model(z), y, reduction="sum"), z)[0]

            g0 = input_gradient(x)
            sign = g0.sign()
            g1 = input_gradient(x + h * sign / sign.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            squares.append(((g1 - g0) ** 2).flatten(1).sum(dim=1))
            wrong_flags.append(model(x).argmax(dim=1) != y)
    squares, wrong = torch.cat(squares), torch.cat(wrong_flags)
    assert 0 < int(wrong.sum()) < len(wrong)
    result = l_r_by_correctness(models, batches, h)
    assert result["member_samples"] == len(wrong)
    assert result["misclassified_fraction"] == pytest.approx(float(wrong.double().mean()), rel=1e-12)
    share = float(squares[wrong].sum() / squares.sum())
    assert result["misclassified_l_r_share"] == pytest.approx(share, rel=1e-9)
    ratio = float(squares[wrong].mean() / squares[~wrong].mean())
    assert result["sq_norm_ratio"] == pytest.approx(ratio, rel=1e-9)
