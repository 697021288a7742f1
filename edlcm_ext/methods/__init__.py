"""Training methods behind a small registry, one file each (as auto-attack keeps its attacks).

A method turns (ensemble, x, y) into the loss to minimise and a dict of scalar tensors to log (the
trainer detaches them and reads them once per logging interval, so no step waits on the device).
It is built from its paper's defaults, which keyword overrides replace.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..ensemble import Ensemble


class Method:
    """Base class: subclasses set ``name`` and implement ``loss``."""

    name: str = ""

    def loss(self, ensemble: Ensemble, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def recorded_options(self) -> dict:
        """Options that define the run, written into the checkpoint's config even when defaulted, so
        a later change of default never changes what a checkpoint means (e.g. EDLCM's reduction)."""
        return {}

    def divergence_hint(self) -> str:
        """What to try when this method's loss becomes non-finite (shown by the trainer)."""
        return ""

    def state_dict(self) -> dict:
        """Training state that must survive a checkpoint (e.g. a schedule's step counter)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name!r} keeps no state, got {sorted(state)}")


METHODS: dict[str, Callable[..., Method]] = {}


def register(name: str):
    def decorator(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = cls
        return cls

    return decorator


def build_method(name: str, **overrides) -> Method:
    if name not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name](**overrides)


from . import adp, base, edlcm, gradient_alignment, pdd  # noqa: E402,F401  (registers the methods)
