"""Warnings for results that look like gradient masking rather than robustness, in the spirit of
auto-attack's flags: each check returns explained messages; callers print or warn them."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

# Accuracy differences below this are noise on the test sets we use.
TOLERANCE = 0.01
LARGE_EPS_ACCURACY_LIMIT = 0.1
# A score-based attack breaking more than this fraction of the samples that every gradient attack
# left points to masked gradients.
SQUARE_MARGIN = 0.03


def check_white_box(result: dict) -> list[str]:
    """Checks on one robust_accuracy() result: monotone in eps, iterative not weaker than one-step."""
    messages = []
    for attack, by_eps in result["attacks"].items():
        eps_sorted = sorted(by_eps)
        for smaller, larger in zip(eps_sorted, eps_sorted[1:]):
            if by_eps[larger]["all"] > by_eps[smaller]["all"] + TOLERANCE:
                messages.append(
                    f"{attack}: robust accuracy rises from {by_eps[smaller]['all']:.3f} at eps={smaller:g} to "
                    f"{by_eps[larger]['all']:.3f} at eps={larger:g}. A larger ball contains the smaller one, so a "
                    "sound attack can only do better: the attack is failing to optimise (gradient masking?)."
                )
    for iterative in ("bim", "pgd", "apgd"):
        if iterative in result["attacks"] and "fgsm" in result["attacks"]:
            for eps, cell in result["attacks"][iterative].items():
                fgsm = result["attacks"]["fgsm"].get(eps)
                if fgsm is not None and cell["all"] > fgsm["all"] + TOLERANCE:
                    messages.append(
                        f"{iterative} is weaker than FGSM at eps={eps:g} ({cell['all']:.3f} vs {fgsm['all']:.3f}). "
                        "An iterative attack that loses to its own first step points to a noisy or masked gradient."
                    )
    if "square" in result["attacks"] and "worst_gradient" in result:  # Square ran on what the gradient attacks left
        for eps, cell in result["attacks"]["square"].items():
            gradient_worst = result["worst_gradient"][eps]["all"]
            if cell["all"] < gradient_worst - SQUARE_MARGIN:
                messages.append(
                    f"square (no gradients) breaks {gradient_worst - cell['all']:.3f} of the samples that every gradient attack "
                    f"left at eps={eps:g} ({gradient_worst:.3f} -> {cell['all']:.3f}): the gradients mislead the white-box "
                    "attacks (gradient masking); trust the worst case, not them."
                )
    return messages


def check_large_eps(accuracy: float, eps: float) -> list[str]:
    if accuracy > LARGE_EPS_ACCURACY_LIMIT:
        return [
            f"robust accuracy is still {accuracy:.3f} at the large eps={eps:g}, where any model should be near 0: "
            "the attack does not follow the loss (gradient masking or obfuscation)."
        ]
    return []


def check_black_box(white_box_worst: dict, black_box: dict) -> list[str]:
    """black_box: {surrogate: {attack: {eps: {"all", ...}}}} against white_box_worst {eps: {"all"}}."""
    messages = []
    for surrogate, by_attack in black_box.items():
        for attack, by_eps in by_attack.items():
            for eps, cell in by_eps.items():
                white = white_box_worst.get(eps)
                if white is not None and cell["all"] < white["all"] - TOLERANCE:
                    messages.append(
                        f"black-box {attack} from {surrogate} at eps={eps:g} ({cell['all']:.3f}) beats the white-box "
                        f"worst case ({white['all']:.3f}): the white-box gradients are not informative (masking)."
                    )
    return messages


def zero_gradient_fraction(model: nn.Module, loader: DataLoader, device: torch.device, batches: int = 2) -> float:
    """Fraction of samples whose input gradient of the loss is exactly zero."""
    model.eval()
    zero = total = 0
    for index, (x, y) in enumerate(loader):
        if index == batches:
            break
        x = x.to(device).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x), y.to(device), reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
        zero += (gradient.flatten(1).abs().amax(1) == 0).sum().item()
        total += y.numel()
    return zero / max(1, total)


def check_zero_gradients(fraction: float) -> list[str]:
    if fraction > 0.05:
        return [
            f"{100 * fraction:.0f}% of samples have an exactly zero input gradient: gradient-based attacks "
            "cannot move them (shattered or masked gradients); try a black-box or transfer attack."
        ]
    return []
