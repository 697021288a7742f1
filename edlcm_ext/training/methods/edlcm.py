import inspect

from ...loss.hvp_curvature_loss import HvpCurvatureLoss
from .base import Method, register


@register("edlcm")
class EDLCM(Method):
    """EDLCM (Zhao et al.): L_ece + alpha L_r + beta L_g (eq 11), alpha = 1, beta = 0.01, through the
    fused :class:`edlcm_ext.HvpCurvatureLoss`; its other options (h, reduction, max_ratio, every, ...)
    pass through, e.g. ``--set every=1``."""

    name = "edlcm"
    fixed: tuple[str, ...] = ()  # options an ablation pins (its zeroed weight), so not recorded as settable

    def __init__(self, alpha: float = 1.0, beta: float = 0.01, **regularizer_options) -> None:
        self.regularizer = HvpCurvatureLoss(alpha=alpha, beta=beta, **regularizer_options)

    @classmethod
    def option_defaults(cls) -> dict[str, object]:
        forwarded = {
            p.name: p.default
            for p in inspect.signature(HvpCurvatureLoss.__init__).parameters.values()
            if p.name != "self"
        }
        # compiled is the trainer's --compile (Method.use_compiled), one switch for every method
        options = {**forwarded, **super().option_defaults()}
        return {key: value for key, value in options.items() if key not in cls.fixed and key != "compiled"}

    def use_compiled(self, option: bool | dict = True) -> None:
        # Only the regularizer's passes: its every schedule is Python state, kept out of the graph.
        self.regularizer.compiled = option

    def members_needed(self) -> int:
        return 2 if self.regularizer.beta != 0 else 1  # L_g compares members

    def loss(self, ensemble, x, y):
        terms = self.regularizer.terms(list(ensemble.members), x, y)
        logs = {"ce": terms.ece}
        if terms.applied:  # the calls every=k skips have no L_r, L_g to average
            logs.update(l_r=terms.l_r.detach(), l_g=terms.l_g.detach(), alpha_applied=terms.alpha_applied)
        return terms.ece + terms.total, logs

    def recorded_options(self) -> dict:
        r = self.regularizer
        options = {
            "alpha": r.alpha,
            "beta": r.beta,
            "h": r.h,
            "reduction": r.reduction,
            "max_ratio": r.max_ratio,
            "max_pull": r.max_pull,
            "every": r.every,
        }
        if r.correct_only:  # experimental (#41); absent means False, the paper's L_r
            options["correct_only"] = True
        return {key: value for key, value in options.items() if key not in self.fixed}

    def divergence_hint(self) -> str:
        r = self.regularizer
        return (
            f"With alpha={r.alpha}, h={r.h}, reduction={r.reduction!r}, max_ratio={r.max_ratio}, alpha * L_r may swamp "
            f"the CE (HvpCurvatureLoss warns when it does): keep max_ratio on, set max_pull, or lower alpha or h "
            f"(docs/defaults.md)."
        )

    def state_dict(self) -> dict:
        return self.regularizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.regularizer.load_state_dict(state)


@register("edlcm_lr")
class OnlyCurvature(EDLCM):
    """EDLCM ablation with only the curvature term: L_ece + alpha L_r (paper sec. IV-D)."""

    name = "edlcm_lr"
    fixed = ("beta",)

    def __init__(self, alpha: float = 1.0, **regularizer_options) -> None:
        super().__init__(alpha=alpha, beta=0.0, **regularizer_options)


@register("edlcm_lg")
class OnlyDispersion(EDLCM):
    """EDLCM ablation with only the dispersion term: L_ece + beta L_g (paper sec. IV-D)."""

    name = "edlcm_lg"
    fixed = ("alpha",)

    def __init__(self, beta: float = 0.01, **regularizer_options) -> None:
        super().__init__(alpha=0.0, beta=beta, **regularizer_options)
