"""Where a training step's time goes, by layer type, for the plain, reference and fused steps, and
how many operators a step dispatches.

    python bench/profile_step.py [--config small_cnn] [--steps 3] [--record]

Uses torch.profiler: the time of every autograd node (backward and double backward) and of every
top-level forward op, grouped by the layer kind it belongs to, in ms per step. Then counts the ATen
and edlcm_ext operators that reach a kernel (views excluded) in a step of each mode, the optimizer
as on a GPU (multi-tensor updates): on a GPU each is at least one kernel launch. What they cost on
the host, which bounds the GPU step at batch 64, is what `bench/step.py --configs overhead` times.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from harness import BASE_MODES, CONFIGS, warmed_step
from records import record_markdown
from torch.utils._python_dispatch import TorchDispatchMode

MODES = ("plain", "reference", "fused", "first_order")
COUNTED_MODES = ("plain", "reference", "fused", "every4", "first_order")

KINDS = (
    ("batch_norm", ("batchnorm", "batch_norm")),
    ("convolution", ("convolution", "conv2d", "mkldnn")),
    ("max_pool", ("max_pool", "maxpool")),
    ("relu", ("relu", "threshold")),
    ("linear", ("addmm", "linear", "mm")),
)
ENGINE_PREFIX = "autograd::engine::evaluate_function: "


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, keys in KINDS if any(key in lowered for key in keys)), "other")


def profile(mode: str, config, steps: int) -> dict[str, float]:
    step, x, y = warmed_step(config, torch.device("cpu"), BASE_MODES[mode])
    with torch.profiler.profile() as prof:
        for _ in range(steps):
            step(x, y)
    per_kind = defaultdict(float)
    for event in prof.events():
        if event.name.startswith(ENGINE_PREFIX):
            per_kind[kind_of(event.name[len(ENGINE_PREFIX) :])] += event.cpu_time_total
        elif event.cpu_parent is None and not event.name.startswith(("ProfilerStep", "<built-in", "Optimizer")):
            per_kind[kind_of(event.name)] += event.cpu_time_total
    return {kind: microseconds / 1000 / steps for kind, microseconds in per_kind.items()}


class OperatorCounter(TorchDispatchMode):
    """Counts the operators dispatched to kernels, views (no kernel) excluded. An operator's own
    calls (inside a composite kernel or ours) run with the mode off, so each counts once."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def operators_per_step(mode: str, config) -> float:
    """Operators per step, over ``every`` consecutive steps for an amortized mode."""
    chosen = BASE_MODES[mode]
    step, x, y = warmed_step(config, torch.device("cpu"), chosen, foreach=True)
    with OperatorCounter() as counter:
        for _ in range(chosen.every):
            step(x, y)
    return counter.count / chosen.every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="small_cnn", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    config = CONFIGS[args.config]
    results = {mode: profile(mode, config, args.steps) for mode in MODES}
    kinds = [kind for kind, _ in KINDS] + ["other"]
    lines = [
        f"ms per step by layer kind ({args.config}: {config.members}x {config.arch}, batch {config.batch}; "
        "autograd nodes and top-level forward ops)",
        "",
        "| kind | " + " | ".join(MODES) + " |",
        "|---|" + "---|" * len(MODES),
    ]
    for kind in kinds + ["total"]:
        cells = [sum(results[m].values()) if kind == "total" else results[m].get(kind, 0.0) for m in MODES]
        lines.append(f"| {kind} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    counts = {mode: operators_per_step(mode, config) for mode in COUNTED_MODES}
    lines += [
        "",
        "operators dispatched to kernels per step (views excluded; every4: mean of 4 consecutive steps)",
        "",
        "| mode | operators | x plain |",
        "|---|---|---|",
    ]
    lines += [f"| {mode} | {count:.0f} | {count / counts['plain']:.2f} |" for mode, count in counts.items()]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.record:
        record_markdown("profile_step.py", f"profile_{args.config}", report)


if __name__ == "__main__":
    main()
