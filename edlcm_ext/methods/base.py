import torch.nn.functional as F

from . import Method, register


def ensemble_cross_entropy(member_logits, y):
    """L_ece = sum_m CE(f_m(x), y), each a batch mean (paper eq 2)."""
    return sum(F.cross_entropy(logits, y) for logits in member_logits)


@register("base")
class Base(Method):
    """The plain ensemble baseline: L_ece (EDLCM paper eq 2)."""

    name = "base"

    def loss(self, ensemble, x, y):
        loss = ensemble_cross_entropy(ensemble.member_logits(x), y)
        return loss, {"ce": loss}
