import importlib.util

from .base import Attack, register


@register("autoattack")
class AutoAttack(Attack):
    """AutoAttack's standard suite (Croce & Hein 2020: APGD-CE, APGD-T, FAB-T, Square), L-inf, from
    torchattacks, the field's own code, so the number readers compare with comes from it and not
    from our attacks. An optional dependency (``pip install torchattacks``, in the [test] extra) and
    not in any preset: on CPUs it costs hours on 1,000 CIFAR images (APGD-T alone runs 9 targets)."""

    def __init__(self, model, eps, seed: int = 0):
        super().__init__(model, eps)
        if importlib.util.find_spec("torchattacks") is None:
            raise ValueError(
                "the autoattack row needs torchattacks (pip install torchattacks); it is an optional dependency"
            )
        self.seed = seed

    def perturb(self, x, y):
        import torchattacks

        classes = self.model(x[:1]).shape[1]
        attack = torchattacks.AutoAttack(
            self.model, norm="Linf", eps=self.eps, version="standard", n_classes=classes, seed=self.seed
        )
        # Its FAB attack calls backward(), which would fill the parameters' .grad: the attacks of this
        # package never touch the model, so its parameters are frozen for the attack's duration.
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for parameter in trainable:
            parameter.requires_grad_(False)
        try:
            return attack(x, y)
        finally:
            for parameter in trainable:
                parameter.requires_grad_(True)
