"""The attacks' base class, registry, presets and table labels (one attack per module beside this one)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...linf_ball import project
from ...registry import Registry


class Attack:
    """Base: ``attack(x, y) -> x_adv``; subclasses implement ``perturb``."""

    name = ""

    def __init__(self, model: nn.Module, eps: float) -> None:
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.model, self.eps = model, float(eps)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        if x.min() < 0 or x.max() > 1:
            raise ValueError("x must hold images in [0, 1]")
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                x_adv = self.perturb(x.detach(), y.detach())
        finally:
            self.model.train(was_training)
        return x_adv.detach()

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    def per_sample_loss(self, output: Tensor, y: Tensor) -> Tensor:
        """The loss the attack ascends, per sample: CE; an attack on another loss overrides this."""
        return F.cross_entropy(output, y, reduction="none")

    def loss_and_gradient(self, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(per-sample loss, its input gradient, output) at x_adv."""
        x_adv = x_adv.detach().requires_grad_(True)
        output = self.model(x_adv)
        loss = self.per_sample_loss(output, y)
        (gradient,) = torch.autograd.grad(loss.sum(), x_adv)
        return loss.detach(), gradient, output.detach()

    def project(self, x_adv: Tensor, x: Tensor) -> Tensor:
        """Back into the eps-ball around x and the image box [0, 1]."""
        return project(x_adv, x, self.eps)


def margin(output: Tensor, y: Tensor) -> Tensor:
    """Per-sample z_y - max_{j != y} z_j: negative exactly when the sample is misclassified."""
    true = output.gather(1, y[:, None]).squeeze(1)
    return true - output.scatter(1, y[:, None], float("-inf")).max(dim=1).values


ATTACKS: Registry = Registry("attack")
register = ATTACKS.register
# Named groups for --attacks. "strong": the AutoAttack-style gradient attacks whose per-sample worst
# case is the headline; "default": those plus the paper's weaker attacks, reported as extra rows.
PRESETS = {"strong": ("apgd", "apgd-dlr", "square"), "default": ("fgsm", "bim", "pgd", "apgd", "apgd-dlr", "square")}
# How tables name each attack at its defaults (the paper's PGD is short and weak: say so).
LABELS = {
    "fgsm": "FGSM",
    "bim": "BIM-10",
    "pgd": "PGD-10 (paper's, weak)",
    "apgd": "APGD-CE",
    "apgd-dlr": "APGD-DLR",
    "square": "Square (black-box, on what the others left)",
    "autoattack": "AutoAttack (torchattacks, standard)",
}


def expand_attack_names(names) -> list[str]:
    """Attack names with presets expanded, in order, without repeats; unknown names raise ValueError."""
    expanded = []
    for name in names:
        for attack in PRESETS.get(name, (name,)):
            if attack not in ATTACKS:
                raise ValueError(
                    f"unknown attack {attack!r}; choose from {sorted(ATTACKS)} or a preset {sorted(PRESETS)}"
                )
            if attack not in expanded:
                expanded.append(attack)
    return expanded


def build_attack(name: str, model: nn.Module, eps: float, **options) -> Attack:
    return ATTACKS.lookup(name)(model, eps, **options)
