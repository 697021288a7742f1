import torch

from ...linf_ball import random_start
from .base import Attack, register


def checkpoints(iterations: int) -> list[int]:
    """APGD's step-size checkpoints (Croce & Hein 2020, sec. 3.2): p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), in whole iterations as auto-attack counts them."""
    length = max(int(0.22 * iterations), 1)
    decrease, shortest = max(int(0.03 * iterations), 1), max(int(0.06 * iterations), 1)
    marks, iteration = [0], length
    while iteration < iterations:
        marks.append(iteration)
        length = max(length - decrease, shortest)
        iteration += length
    return marks


def steps_to_halve(increases, steps_since_mark: int, rho: float, step, step_at_last_mark, best_loss, loss_at_last_mark):
    """Samples whose step size halves at a checkpoint (Croce & Hein 2020, sec. 3.2): condition 1,
    fewer than rho of the steps since the last checkpoint raised the loss over the previous iterate;
    or condition 2, neither the step size nor the best loss changed since the last checkpoint."""
    too_few = increases < rho * steps_since_mark
    stalled = (step == step_at_last_mark) & (best_loss == loss_at_last_mark)
    return too_few | stalled


@register("apgd")
class APGD(Attack):
    """APGD with the CE loss (Croce & Hein 2020), L-inf, untargeted: momentum 0.75, step size 2*eps
    halved at checkpoints when fewer than rho = 0.75 of the steps since the last checkpoint raised
    the loss over the previous iterate (the paper's condition 1), or when neither the step size nor
    the best loss changed; each halving restarts from the best point. ``iterations`` (default 100)
    and ``restarts`` (random starts, default 1).
    """

    def __init__(self, model, eps, iterations: int = 100, restarts: int = 1, rho: float = 0.75, momentum: float = 0.75):
        super().__init__(model, eps)
        if iterations < 1 or restarts < 1:
            raise ValueError(f"iterations and restarts must be >= 1, got {iterations}, {restarts}")
        self.iterations, self.restarts, self.rho, self.momentum = iterations, restarts, rho, momentum

    def perturb(self, x, y):
        best = x.clone()
        best_fooled = torch.zeros_like(y, dtype=torch.bool)
        for _ in range(self.restarts):
            candidate, fooled = self._run(x, y)
            better = fooled & ~best_fooled
            best[better], best_fooled[better] = candidate[better], True
            if best_fooled.all():
                break
        return best

    def _run(self, x, y):
        view = (-1,) + (1,) * (x.dim() - 1)
        marks = set(checkpoints(self.iterations)[1:])
        x_adv = random_start(x, self.eps)
        step = torch.full(y.shape, 2 * self.eps, device=x.device)
        loss, gradient, output = self.loss_and_gradient(x_adv, y)
        best_loss, x_best = loss.clone(), x_adv.clone()
        fooled = output.argmax(1) != y
        x_fooled = x_adv.clone()
        # first step: plain projected signed-gradient step
        x_previous = x_adv
        x_adv = self.project(x_adv + step.view(view) * gradient.sign(), x)
        loss_at_last_mark, step_at_last_mark = best_loss.clone(), step.clone()
        increases, last_mark, previous_loss = torch.zeros_like(loss), 0, best_loss.clone()
        for iteration in range(1, self.iterations):
            loss, gradient, output = self.loss_and_gradient(x_adv, y)
            now_fooled = output.argmax(1) != y
            x_fooled[now_fooled & ~fooled] = x_adv[now_fooled & ~fooled]
            fooled |= now_fooled
            increases += (loss > previous_loss).float()  # condition 1: steps that raised the loss over the last
            previous_loss = loss
            improved = loss > best_loss
            x_best[improved], best_loss[improved] = x_adv[improved], loss[improved]
            if iteration in marks:
                halve = steps_to_halve(
                    increases, iteration - last_mark, self.rho, step, step_at_last_mark, best_loss, loss_at_last_mark
                )
                step[halve] /= 2
                x_adv[halve] = x_best[halve]  # restart the halved samples from their best point
                if halve.any():  # the gradient at the restarted points
                    _, gradient, _ = self.loss_and_gradient(x_adv, y)
                increases.zero_()
                loss_at_last_mark, step_at_last_mark, last_mark = best_loss.clone(), step.clone(), iteration
            z = self.project(x_adv + step.view(view) * gradient.sign(), x)
            x_next = self.project(x_adv + self.momentum * (z - x_adv) + (1 - self.momentum) * (x_adv - x_previous), x)
            x_previous, x_adv = x_adv, x_next
        loss, _, output = self.loss_and_gradient(x_adv, y)
        now_fooled = output.argmax(1) != y
        x_fooled[now_fooled & ~fooled] = x_adv[now_fooled & ~fooled]
        fooled |= now_fooled
        improved = loss > best_loss
        x_best[improved] = x_adv[improved]
        return torch.where(fooled.view(view), x_fooled, x_best), fooled
