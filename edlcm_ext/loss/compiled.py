"""The compiled path: one switch (``HvpCurvatureLoss(compiled=True)``, ``Method.use_compiled``,
``edlcm train --compile``) that runs a step's forward and backward as a few generated kernels
instead of thousands of eager ATen calls, which is what bounds the step on a GPU (docs/compiled.md).

torch.compile's AOTAutograd cannot differentiate a compiled graph twice (pytorch/pytorch#91469), and
EDLCM's parameter gradient is a gradient of input gradients (eq 8). Taken with ``torch.func.grad``
*inside* the compiled function, the input gradient becomes part of the traced forward graph, and the
compiler differentiates that graph once, to the parameters. Each member's parameters and buffers
enter the transformed function as arguments (``functional_call``): BatchNorm's running-statistics
update then writes into the module's own buffers, as in eager mode (a buffer captured by the
transformed function and mutated inside it is refused).

On CUDA the default mode is "reduce-overhead": Inductor's kernels replayed as CUDA graphs, so the
host launches a graph per step rather than each kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value

from .regularizer import sign_direction

# torch.compile's keyword arguments per device type when the switch is plain True; a dict given to
# the switch replaces them (e.g. {"backend": "aot_eager"}: trace and differentiate once, no codegen).
DEFAULT_OPTIONS = {"cuda": {"mode": "reduce-overhead"}}


def compile_options(option: bool | dict, device: torch.device) -> dict:
    """torch.compile's keyword arguments for the switch's value on ``device``."""
    return dict(option) if isinstance(option, dict) else dict(DEFAULT_OPTIONS.get(device.type, {}))


def check_switch(name: str, option: object) -> None:
    """Raise a clear error unless ``option`` is a bool or a dict of torch.compile keyword arguments."""
    if not isinstance(option, (bool, dict)):
        raise TypeError(f"{name} must be True, False or a dict of torch.compile arguments, got {option!r}")
    if isinstance(option, dict) and not hasattr(torch, "compile"):
        raise RuntimeError(f"{name}: this torch ({torch.__version__}) has no torch.compile")


class LazilyCompiled:
    """``fn`` compiled on its first call, for the device of the first tensor argument (the mode
    depends on it); the compiled function is kept, and torch.compile recompiles it on its own when a
    guard fails (a new shape, train/eval mode)."""

    def __init__(self, fn: Callable, option: bool | dict) -> None:
        self.fn, self.option, self.compiled = fn, option, None

    def __call__(self, *args):
        if self.compiled is None:
            device = next(a.device for a in args if isinstance(a, Tensor))
            self.compiled = torch.compile(self.fn, **compile_options(self.option, device))
        return self.compiled(*args)


def _summed_cross_entropy(model: nn.Module, y: Tensor):
    """(l, params, buffers): l(inputs, params, buffers) is (``model``'s CE summed over the batch, whether
    it classifies each sample correctly), the second an auxiliary output for torch.func."""

    def summed_cross_entropy(inputs, params, buffers):
        logits = functional_call(model, (params, buffers), (inputs,))
        return F.cross_entropy(logits, y, reduction="sum"), logits.detach().argmax(dim=1) == y

    return summed_cross_entropy, dict(model.named_parameters()), dict(model.named_buffers())


def functional_input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(grad_x l(x), l(x)), l = CE summed over the batch, by torch.func.grad: differentiable to the
    parameters by ordinary autograd, and traceable by torch.compile (no create_graph)."""
    loss, params, buffers = _summed_cross_entropy(model, y)
    grad_x, (ce_sum, _) = grad_and_value(loss, has_aux=True)(x, params, buffers)
    return grad_x, ce_sum


def functional_input_gradient_differences(
    models: Sequence[nn.Module], x: Tensor, y: Tensor, h: float
) -> tuple[Tensor, Tensor, Tensor]:
    """u (M, B, D), L_ece and the (M, B) correctness, as
    :func:`edlcm_ext.loss.regularizer.input_gradient_differences` computes them with create_graph=True
    (eqs 2, 8), here with torch.func."""
    differences, correct, ece = [], [], x.new_zeros(())
    for model in models:
        loss, params, buffers = _summed_cross_entropy(model, y)
        grad_at_x, (ce_sum, member_correct) = grad_and_value(loss, has_aux=True)(x, params, buffers)
        grad_at_x1, _ = grad(loss, has_aux=True)(x + h * sign_direction(grad_at_x), params, buffers)
        differences.append((grad_at_x1 - grad_at_x).flatten(1))
        correct.append(member_correct)
        ece = ece + ce_sum / x.shape[0]
    return torch.stack(differences), ece, torch.stack(correct)
