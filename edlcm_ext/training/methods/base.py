"""The methods' base class and registry (one method per module beside this one)."""

from __future__ import annotations

import inspect

from torch import Tensor

from ...loss.compiled import LazilyCompiled, check_switch
from ...models.ensemble import Ensemble
from ...registry import Registry


class Method:
    """Base class: subclasses set ``name`` and implement ``loss``."""

    name: str = ""
    min_members: int = 1  # methods whose terms compare members need >= 2

    @classmethod
    def option_defaults(cls) -> dict[str, object]:
        """The options ``build_method(name, **options)`` accepts (``edlcm train --set``), with defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }

    def members_needed(self) -> int:
        """The fewest members this method, as configured, can train."""
        return self.min_members

    def loss(self, ensemble: Ensemble, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def use_compiled(self, option: bool | dict = True) -> None:
        """Run this method's loss through torch.compile from now on (``edlcm train --compile``;
        :mod:`edlcm_ext.loss.compiled`): True for torch.compile's defaults per device, or a dict of its
        keyword arguments. Methods whose loss holds input gradients take them with torch.func."""
        check_switch("compile", option)
        if option is not False:
            self.loss = LazilyCompiled(self.loss, option)

    def recorded_options(self) -> dict:
        """Options that define the run, written into the checkpoint's config even when defaulted, so
        a later change of default never changes what a checkpoint means (e.g. EDLCM's reduction)."""
        return {}

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Called by the trainer as epoch ``epoch`` (0-based) of ``epochs`` starts, for methods whose
        loss follows the training schedule (TRS's neighbour radius); a no-op by default."""

    def divergence_hint(self) -> str:
        """What to try when this method's loss becomes non-finite (shown by the trainer)."""
        return ""

    def state_dict(self) -> dict:
        """Training state that must survive a checkpoint (e.g. a schedule's step counter)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, got {sorted(state)}")


METHODS: Registry = Registry("method")
register = METHODS.register


def build_method(name: str, **overrides) -> Method:
    METHODS.lookup(name)
    unknown = sorted(set(overrides) - set(METHODS[name].option_defaults()))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in METHODS[name].option_defaults().items()) or "none"
        raise ValueError(f"method {name!r} has no option {', '.join(unknown)}; its options (defaults): {known}")
    return METHODS[name](**overrides)
