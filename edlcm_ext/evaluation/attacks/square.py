import math

import torch

from .base import Attack, margin, register

# Square's schedule of the fraction p of pixels changed per query (Andriushchenko et al. 2020,
# sec. 3 and their appendix): p_init halved at these points of a 10,000-query budget, rescaled to
# the budget actually given.
HALVING_POINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, queries: int) -> float:
    progress = int(query / queries * 10_000)
    return p_init / 2 ** sum(progress > point for point in HALVING_POINTS)


@register("square")
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020), L-inf, untargeted, score-based: it never uses a
    gradient, so gradient masking cannot stop it. Start from vertical stripes of +-eps; each query
    redraws one random square window (its side shrinking with the schedule above) with a new +-eps
    sign per channel, kept when the margin loss z_y - max_{j != y} z_j falls; a sample stops once
    misclassified. ``queries`` (default 5000) forward passes at most, ``p_init`` 0.8.
    """

    def __init__(self, model, eps, queries: int = 5000, p_init: float = 0.8):
        super().__init__(model, eps)
        if queries < 1 or not 0 < p_init <= 1:
            raise ValueError(f"queries must be >= 1 and p_init in (0, 1], got {queries}, {p_init}")
        self.queries, self.p_init = queries, p_init

    @torch.no_grad()
    def perturb(self, x, y):
        batch, channels, height, width = x.shape
        stripes = torch.randint(0, 2, (batch, channels, 1, width), device=x.device, dtype=x.dtype) * 2 - 1
        x_best = self.project(x + self.eps * stripes, x)
        best_margin = margin(self.model(x_best), y)
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        for query in range(1, self.queries):
            active = (best_margin > 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            fraction = square_fraction(self.p_init, query, self.queries)
            side = min(max(int(round(math.sqrt(fraction * height * width))), 1), height - 1 if height > 1 else 1)
            top = torch.randint(0, height - side + 1, (active.numel(),), device=x.device)
            left = torch.randint(0, width - side + 1, (active.numel(),), device=x.device)
            window = ((rows[None, :] >= top[:, None]) & (rows[None, :] < (top + side)[:, None]))[:, :, None] & (
                (cols[None, :] >= left[:, None]) & (cols[None, :] < (left + side)[:, None])
            )[:, None, :]
            signs = torch.randint(0, 2, (active.numel(), channels, 1, 1), device=x.device, dtype=x.dtype) * 2 - 1
            candidate = torch.where(
                window[:, None], self.project(x[active] + self.eps * signs, x[active]), x_best[active]
            )
            new_margin = margin(self.model(candidate), y[active])
            better = new_margin < best_margin[active]
            x_best[active[better]] = candidate[better]
            best_margin[active[better]] = new_margin[better]
        return x_best
