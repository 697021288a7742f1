"""Base: the plain ensemble, trained on the ensemble cross-entropy alone."""

from ...loss.regularizer import ensemble_cross_entropy
from .base import Method, register


@register("base")
class Base(Method):
    """The plain ensemble baseline: L_ece (EDLCM paper eq 2)."""

    name = "base"

    def loss(self, ensemble, x, y):
        loss = ensemble_cross_entropy(ensemble.member_logits(x), y)
        return loss, {"ce": loss}
