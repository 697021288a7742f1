import torch

from ...linf_ball import random_start
from .base import Attack, register


@register("pgd")
class PGD(Attack):
    """PGD (Madry et al. 2018), L-inf, untargeted: ``steps`` signed-gradient steps of size
    ``step_size`` (default eps / 10) projected onto the eps-ball, from a uniform random start
    (``random_start``), best of ``restarts`` runs per sample (a misclassifying run wins, then the
    higher loss). Defaults as in PDD's evaluation: 10 steps, step eps/10, one random start.
    """

    def __init__(
        self, model, eps, steps: int = 10, step_size: float | None = None, random_start: bool = True, restarts: int = 1
    ):
        super().__init__(model, eps)
        if steps < 1 or restarts < 1:
            raise ValueError(f"steps and restarts must be >= 1, got {steps}, {restarts}")
        self.steps, self.restarts, self.random_start = steps, restarts, random_start
        self.step_size = eps / 10 if step_size is None else step_size

    def perturb(self, x, y):
        best, best_loss = x.clone(), torch.full(y.shape, -float("inf"), device=x.device)
        best_fooled = torch.zeros_like(y, dtype=torch.bool)
        for _ in range(self.restarts):
            x_adv = random_start(x, self.eps) if self.random_start else x.clone()
            for _ in range(self.steps):
                _, gradient, _ = self.loss_and_gradient(x_adv, y)
                x_adv = self.project(x_adv + self.step_size * gradient.sign(), x)
            loss, _, output = self.loss_and_gradient(x_adv, y)
            fooled = output.argmax(dim=1) != y
            better = (fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss))
            best[better], best_loss[better], best_fooled[better] = x_adv[better], loss[better], fooled[better]
        return best


@register("bim")
class BIM(PGD):
    """BIM (Kurakin et al. 2017): PGD without the random start; 10 steps of eps/10 by default."""

    def __init__(self, model, eps, steps: int = 10, step_size: float | None = None):
        super().__init__(model, eps, steps=steps, step_size=step_size, random_start=False, restarts=1)
