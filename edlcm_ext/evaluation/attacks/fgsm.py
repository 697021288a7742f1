from .base import Attack, register


@register("fgsm")
class FGSM(Attack):
    """FGSM (Goodfellow et al. 2015): x + eps * sign(grad_x CE), clipped to [0, 1]. L-inf, untargeted.

    Example: ``FGSM(ensemble, eps=0.01)(x, y)`` with x (B, C, H, W) in [0, 1].
    """

    def perturb(self, x, y):
        _, gradient, _ = self.loss_and_gradient(x, y)
        return (x + self.eps * gradient.sign()).clamp(0, 1)
