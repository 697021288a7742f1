"""What bench/ times: the modes (plain, reference, fused EDLCM, amortized, other methods; layouts and
autocast), the configurations (architecture, members, batch) and one training step of each, built
the same way by step.py, profile_step.py and the pytest-benchmark cases."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dataclass_replace

import torch
import torch.nn.functional as F

import edlcm_ext
from edlcm_ext.loss.compiled import LazilyCompiled
from edlcm_ext.loss.first_order import FirstOrderCurvatureLoss
from edlcm_ext.loss.reference import edlcm_terms
from edlcm_ext.models import build_model
from edlcm_ext.models.ensemble import Ensemble
from edlcm_ext.training.methods import METHODS, build_method


@dataclass(frozen=True)
class Mode:
    loss: str  # plain | reference | fused | first_order | method
    channels_last: bool = False
    amp: bool = False
    every: int = 1
    max_pull: float | None = None
    method: str = ""  # with loss="method": a name from edlcm_ext.training.methods
    options: tuple[tuple[str, object], ...] = ()  # the method's options (build_method keywords)
    # the loss through torch.compile (edlcm_ext.loss.compiled): "inductor" (generated kernels) or "graphed"
    # (the same, replayed as CUDA graphs: mode="reduce-overhead", CUDA only)
    compiled: str = ""


BASE_MODES = {
    "plain": Mode("plain"),
    "reference": Mode("reference"),
    "fused": Mode("fused"),
    "every4": Mode("fused", every=4),
    "every8": Mode("fused", every=8),
    "every16": Mode("fused", every=16),
    # The bound takes the CE's weight gradient apart from the regularizer's whatever its value.
    "bounded": Mode("fused", max_pull=0.1),
    # HvpCurvatureLoss's defaults: every=16 with the pull bound (max_pull=1) on its regularizing calls.
    "every16_bounded": Mode("fused", every=16, max_pull=1.0),
    "first_order": Mode("first_order"),
}
# Layout and precision variants a speed-minded user runs: the best plain one is the baseline.
LAYOUT_MODES = ("plain", "reference", "fused", "every4", "every8", "every16", "every16_bounded", "bounded")
AMP_MODES = ("plain", "fused", "every4", "every8", "every16")
# base and edlcm are plain and fused above.
OTHER_METHODS = tuple(name for name in sorted(METHODS) if name not in ("base", "edlcm"))
# Methods at other options than their defaults: PGD adversarial training at k steps (at's default is
# the single-step form), to pick the k whose step costs what exact EDLCM's does (docs/results.md).
# Named with --modes only (not part of --methods).
VARIANT_MODES = {
    f"at_pgd{k}_cl": Mode("method", channels_last=True, method="at", options=(("steps", k),))
    for k in (2, 3, 4, 5, 7, 10)
}


def mode_table(amp: bool, methods: bool = False, compiled: bool = False, graphed: bool = False) -> dict[str, Mode]:
    modes = dict(BASE_MODES)
    if compiled:
        modes.update({name: mode for name, mode in COMPILED_MODES.items() if mode.compiled == "inductor"})
    if graphed:
        modes.update({name: mode for name, mode in COMPILED_MODES.items() if mode.compiled == "graphed"})
    for name in LAYOUT_MODES:
        modes[f"{name}_cl"] = dataclass_replace(BASE_MODES[name], channels_last=True)
    if methods:
        for name in OTHER_METHODS:
            modes[f"{name}_cl"] = Mode("method", channels_last=True, method=name)
    if amp:
        for name in AMP_MODES:
            modes[f"{name}_amp"] = dataclass_replace(BASE_MODES[name], amp=True)
            modes[f"{name}_cl_amp"] = dataclass_replace(BASE_MODES[name], amp=True, channels_last=True)
    return modes


# The compiled path (bench/step.py --compiled): plain and EDLCM alike, in the faster layout.
COMPILED_MODES = {
    f"{prefix}{kind}_cl": Mode(loss, channels_last=True, every=every, compiled=kind.replace("compiled", "inductor"))
    for prefix, loss, every in (
        ("plain_", "plain", 1),
        ("", "fused", 1),
        ("every4_", "fused", 4),
        ("every8_", "fused", 8),
        ("every16_", "fused", 16),
    )
    for kind in ("compiled", "graphed")
}
COMPILE_OPTIONS = {"inductor": {}, "graphed": {"mode": "reduce-overhead"}}

MODES = mode_table(amp=False)
ALL_MODES = {
    **mode_table(amp=True, methods=True, compiled=True, graphed=True),
    **VARIANT_MODES,
}  # what --modes may name
# EDLCM's exact modes and the pure-PyTorch reference in the same layout, timed against each other
REFERENCE_OF = {
    "fused": "reference",
    "fused_cl": "reference_cl",
    "compiled_cl": "reference_cl",
    "graphed_cl": "reference_cl",
}


@dataclass(frozen=True)
class Config:
    name: str
    arch: str
    members: int
    classes: int
    batch: int
    image: int = 32


CONFIGS = {
    "small_cnn": Config("small_cnn", "small_cnn", members=3, classes=10, batch=64),
    "resnet18": Config("resnet18", "resnet18", members=3, classes=100, batch=64),
    "resnet18_b128": Config("resnet18-b128", "resnet18", members=3, classes=100, batch=128),
    "small_cnn_b128": Config("small_cnn-b128", "small_cnn", members=3, classes=10, batch=128),
    # Almost no arithmetic: a step's time is its host overhead (Python, dispatcher, autograd engine),
    # which is what bounds the GPU step at batch 64 (bench/results/step_2026-11-26_cuda_*).
    "overhead": Config("overhead", "small_cnn", members=3, classes=10, batch=2, image=16),
}
# --quick keeps both architectures but shrinks ResNet-18's batch to fit a minute on 2 CPU cores.
QUICK_CONFIGS = {**CONFIGS, "resnet18": Config("resnet18-b8", "resnet18", members=3, classes=100, batch=8)}


def memory_format(mode: Mode) -> torch.memory_format:
    return torch.channels_last if mode.channels_last else torch.contiguous_format


def make_ensemble(
    config: Config, device: torch.device, mode: Mode = BASE_MODES["plain"], seed: int = 0
) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    return [
        build_model(config.arch, config.classes).to(device, memory_format=memory_format(mode)).train()
        for _ in range(config.members)
    ]


def make_batch(config: Config, device: torch.device, mode: Mode = BASE_MODES["plain"], seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(config.batch, 3, config.image, config.image, generator=generator)
    y = torch.randint(0, config.classes, (config.batch,), generator=generator)
    return x.to(device, memory_format=memory_format(mode)), y.to(device)


def make_step(mode: Mode, models: list[torch.nn.Module], foreach: bool | None = None):
    """A closure running one training step of ``mode`` on (x, y); ``foreach`` as torch.optim.SGD's
    (None: multi-tensor updates on CUDA, a loop over parameters on the CPU)."""
    params = [p for m in models for p in m.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4, foreach=foreach)
    regularizer = (
        FirstOrderCurvatureLoss(every=mode.every, max_pull=mode.max_pull)
        if mode.loss == "first_order"
        else edlcm_ext.HvpCurvatureLoss(
            every=mode.every,
            max_pull=mode.max_pull,
            compiled=COMPILE_OPTIONS[mode.compiled] if mode.compiled and mode.loss == "fused" else False,
        )
    )

    method = build_method(mode.method, **dict(mode.options)) if mode.loss == "method" else None
    ensemble = Ensemble(models)

    def plain_loss(x, y):
        return sum(F.cross_entropy(m(x), y) for m in models)

    compiled_plain_loss = LazilyCompiled(plain_loss, COMPILE_OPTIONS[mode.compiled]) if mode.compiled else plain_loss

    def loss_of(x, y):
        if method is not None:
            return method.loss(ensemble, x, y)[0]
        if mode.loss == "plain":
            return compiled_plain_loss(x, y)
        if mode.loss == "reference":  # the same loss as the regularizer's, in plain PyTorch
            r = regularizer
            terms = edlcm_terms(models, x, y, r.alpha, r.beta, r.h, r.reduction, r.max_ratio)
        else:
            terms = regularizer.terms(models, x, y)
        return terms.ece + terms.total

    def step(x, y):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=mode.amp):
            loss = loss_of(x, y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def warmed_step(config: Config, device: torch.device, mode: Mode, foreach: bool | None = None):
    """(step, x, y) of a fresh ensemble, after one step: libraries initialized, optimizer state allocated."""
    x, y = make_batch(config, device, mode)
    step = make_step(mode, make_ensemble(config, device, mode), foreach=foreach)
    step(x, y)
    return step, x, y
