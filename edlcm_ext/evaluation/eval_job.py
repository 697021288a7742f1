"""``edlcm eval``: evaluate trainer checkpoints with the full suite and write JSON, Markdown, PNG.

Every per-sample result is cached under ``out_dir/flags/`` as soon as it is computed, so an
interrupted evaluation restarts where it stopped (one attack and eps at a time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from ..devices import resolve_device
from ..training.checkpoint import atomic_save, load_checkpoint, load_data_file
from ..training.data import fixed_subset, load_dataset
from . import sanity
from .attacks import PRESETS
from .curvature import curvature_diagnostics
from .evaluate import (
    attack_flags,
    correct_flags,
    craft,
    robust_summary,
    still_correct,
    summarize,
    transfer_matrix,
    transferability_success_rate,
    white_box_flags,
)
from .report import write_report

# PDD's evaluation radii (pixel units of [0, 1] images); digits are coarse 8x8 images.
DEFAULT_EPS = {
    "cifar10": (0.005, 0.01),
    "imagefolder": (0.005, 0.01),
    "cifar100": (0.01, 0.02),
    "tinyimagenet": (0.01, 0.02),
    "digits": (0.05, 0.1),
}


@dataclass
class EvalSettings:
    checkpoints: list[str]
    names: list[str] | None = None
    attacks: list[str] = field(default_factory=lambda: list(PRESETS["default"]))
    eps: list[float] | None = None  # default: DEFAULT_EPS of the checkpoint's dataset
    tsr_eps: list[float] = field(default_factory=list)
    surrogates: list[str] = field(default_factory=list)
    black_box_attacks: list[str] | None = None  # crafted on each surrogate; default: attacks
    large_eps: float = 0.3
    max_samples: int = 0
    batch_size: int = 256
    data_dir: str | None = None
    out_dir: str = "runs/eval"
    cache_dir: str | None = None  # per-sample results for resuming; default out_dir/flags
    device: str = "auto"
    apgd_iterations: int = 100
    pgd_restarts: int = 1
    square_queries: int = 5000
    curvature: int = 0  # > 0: curvature diagnostics (|u|, cosines, lambda_max) on this many test samples
    progress: bool = True


class FlagCache:
    """Per-sample results on disk, keyed by what produced them."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        path = os.path.join(self.folder, key + ".pt")
        if os.path.exists(path):
            return load_data_file(path)
        value = compute()
        atomic_save(value, path)
        return value


def _json_ready(value):
    if isinstance(value, dict):
        return {(f"{k:g}" if isinstance(k, float) else k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def _names(settings: EvalSettings, configs) -> list[str]:
    if settings.names:
        if len(settings.names) != len(settings.checkpoints):
            raise ValueError("give one --name per --checkpoint")
        return settings.names
    names = [config.method for config in configs]
    if len(set(names)) < len(names):  # same method twice: tell them apart by run folder
        names = [os.path.basename(os.path.dirname(os.path.abspath(path))) for path in settings.checkpoints]
    return names


def checkpoint_fingerprint(path: str, *details) -> str:
    """Identifies a checkpoint by its content plus ``details``, so cached results of a retrained model
    are never reused, and a committed cache stays valid in another clone (where paths and times differ)."""
    with open(path, "rb") as handle:
        content = hashlib.sha1(handle.read()).hexdigest()
    return hashlib.sha1(json.dumps([content, *details]).encode()).hexdigest()[:10]


def evaluate_one(
    name: str, checkpoint: str, settings: EvalSettings, device: torch.device, transfer_examples: dict
) -> dict:
    """One checkpoint's results. ``transfer_examples`` keeps black-box examples crafted on each
    surrogate, so every checkpoint is attacked with the same ones and they are crafted once."""
    ensemble, config, info, _ = load_checkpoint(checkpoint, str(device))
    if config.channels_last:  # the layout it was trained in: faster convolutions, so faster Square queries
        ensemble = ensemble.to(memory_format=torch.channels_last)
    data_dir = settings.data_dir or config.data_dir
    test_set, _ = load_dataset(config.dataset, data_dir, train=False)
    test_set = fixed_subset(test_set, settings.max_samples)
    loader = DataLoader(test_set, batch_size=settings.batch_size)
    eps_values = list(settings.eps or DEFAULT_EPS[config.dataset])
    options = {
        "apgd": {"iterations": settings.apgd_iterations},
        "apgd-dlr": {"iterations": settings.apgd_iterations},
        "pgd": {"restarts": settings.pgd_restarts},
        "square": {"queries": settings.square_queries},
    }
    # Everything a cached result depends on: the model file, the test images (which folder, which
    # fixed subset) and the attacks' budgets; the attack and eps are in each key below.
    test_images = [config.dataset, os.path.basename(os.path.normpath(data_dir)) if data_dir else None, len(test_set)]
    fingerprint = checkpoint_fingerprint(checkpoint, test_images, options)
    cache = FlagCache(
        os.path.join(settings.cache_dir or os.path.join(settings.out_dir, "flags"), f"{name}-{fingerprint}")
    )
    progress = settings.progress

    clean = cache.get("clean", lambda: correct_flags(ensemble, loader, device))
    flags = {
        (a, e): f
        for e in eps_values
        for a, f in white_box_flags(
            ensemble, loader, clean, settings.attacks, e, device, options, progress, cached=cache.get
        ).items()
    }
    result = {
        "checkpoint": checkpoint,
        "dataset": config.dataset,
        **robust_summary(clean, flags, settings.attacks, eps_values),
    }
    warnings_found = sanity.check_white_box(result)
    if settings.large_eps:
        large = cache.get(
            f"sanity_pgd50_{settings.large_eps:g}",
            lambda: attack_flags(
                ensemble,
                loader,
                "pgd",
                settings.large_eps,
                device,
                options={"steps": 50, "step_size": settings.large_eps / 20},
                progress=progress,
            ),
        )
        result["large_eps"] = {"eps": settings.large_eps, "attack": "pgd-50", **summarize(clean, large)}
        warnings_found += sanity.check_large_eps(result["large_eps"]["all"], settings.large_eps)
    warnings_found += sanity.check_zero_gradients(sanity.zero_gradient_fraction(ensemble, loader, device))
    if settings.surrogates:
        result["black_box"] = {}
        for surrogate_path in settings.surrogates:
            surrogate, surrogate_config, _, _ = load_checkpoint(surrogate_path, str(device))
            label = f"{surrogate_config.arch}x{surrogate_config.members}"
            if label in result["black_box"]:  # two surrogates of one architecture: tell them apart by run folder
                label += f" ({os.path.basename(os.path.dirname(os.path.abspath(surrogate_path)))})"
            surrogate_fingerprint = checkpoint_fingerprint(surrogate_path)
            result["black_box"][label] = {}
            for a in settings.black_box_attacks or settings.attacks:
                result["black_box"][label][a] = {}
                for e in eps_values:

                    def compute(a=a, e=e, surrogate=surrogate, surrogate_path=surrogate_path):
                        key = (surrogate_path, a, e, config.dataset, len(clean))
                        if key not in transfer_examples:
                            transfer_examples[key] = craft(surrogate, loader, a, e, device, options.get(a), progress)
                        return still_correct(ensemble, transfer_examples[key])

                    result["black_box"][label][a][e] = summarize(
                        clean, cache.get(f"black_{surrogate_fingerprint}_{a}_{e:g}", compute)
                    )
        warnings_found += sanity.check_black_box(result["worst"], result["black_box"])
    if settings.tsr_eps:
        result["tsr"] = {}
        for eps in settings.tsr_eps:
            matrix = cache.get(
                f"transfer_pgd_{eps:g}",
                lambda eps=eps: transfer_matrix(list(ensemble.members), loader, eps, device, progress=progress),
            )
            result["tsr"][eps] = {"matrix": matrix.tolist(), "tsr": transferability_success_rate(matrix)}
    if settings.curvature:
        path = os.path.join(cache.folder, f"curvature_{settings.curvature}.json")
        if not os.path.exists(path):
            stats = curvature_diagnostics(list(ensemble.members), loader, device, max_samples=settings.curvature)
            with open(path, "w") as out:
                json.dump(stats, out)
        with open(path) as cached:
            result["curvature"] = json.load(cached)
    result["warnings"] = warnings_found
    for message in warnings_found:
        warnings.warn(f"{name}: {message}", stacklevel=2)
    return result


def run_evaluation(settings: EvalSettings) -> tuple[dict[str, dict], list[str]]:
    """Evaluate every checkpoint; returns (results by name, written file paths)."""
    device = resolve_device(settings.device)
    configs = [load_checkpoint(path)[1] for path in settings.checkpoints]
    results, transfer_examples = {}, {}
    os.makedirs(settings.out_dir, exist_ok=True)
    results_path = os.path.join(settings.out_dir, "results.json")
    for name, checkpoint in zip(_names(settings, configs), settings.checkpoints):
        results[name] = evaluate_one(name, checkpoint, settings, device, transfer_examples)
        with open(results_path, "w") as out:
            json.dump({"settings": dataclasses.asdict(settings), "results": _json_ready(results)}, out, indent=2)
    return results, [results_path] + write_report(results, settings.out_dir)
