"""Evaluation: white-box robust accuracy (per attack and eps, with a per-sample "still robust" flag
so the worst case over attacks is reported too, as auto-attack does), black-box transfer from
surrogate models, and the transferability success rate TSR between members (paper eq 12).

Per-sample flags are what gets computed and cached; every accuracy is a summary of them, so an
evaluation can be stopped and resumed one (attack, eps) at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .attacks import build_attack


@torch.no_grad()
def correct_flags(model: nn.Module, loader: DataLoader, device: torch.device) -> Tensor:
    """Per-sample bool: the model classifies the clean image correctly."""
    model.eval()
    return torch.cat([(model(x.to(device)).argmax(1) == y.to(device)).cpu() for x, y in loader])


Crafted = list[tuple[Tensor, Tensor]]  # (adversarial images, labels) per batch


def craft(
    source: nn.Module,
    loader: DataLoader,
    attack: str,
    eps: float,
    device: torch.device,
    options: dict | None = None,
    progress: bool = True,
) -> Crafted:
    """Adversarial examples crafted on ``source`` for every batch of ``loader``."""
    crafted = []
    for x, y in tqdm(loader, desc=f"{attack} eps={eps:g}", disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        crafted.append((build_attack(attack, source, eps, **(options or {}))(x, y), y))
    return crafted


@torch.no_grad()
def still_correct(target: nn.Module, crafted: Crafted) -> Tensor:
    """Per-sample bool: ``target`` classifies the crafted example correctly."""
    target.eval()
    return torch.cat([(target(x_adv).argmax(1) == y).cpu() for x_adv, y in crafted])


def attack_flags(
    model: nn.Module, loader: DataLoader, attack: str, eps: float, device: torch.device, **craft_options
) -> Tensor:
    """Per-sample bool: the model resists the white-box attack."""
    return still_correct(model, craft(model, loader, attack, eps, device, **craft_options))


# Attacks run, as AutoAttack runs them, only on the samples that every attack before them in the list
# left correctly classified: Square's 5000 queries are spent where the gradient attacks failed. Their
# flag is then "robust to this attack and to all before it", so their row is a running worst case.
ON_SURVIVORS = ("square",)


def white_box_flags(
    model: nn.Module,
    loader: DataLoader,
    clean: Tensor,
    attacks: Sequence[str],
    eps: float,
    device: torch.device,
    attack_options: dict[str, dict] | None = None,
    progress: bool = True,
    cached: Callable[[str, Callable[[], Tensor]], Tensor] = lambda key, compute: compute(),
) -> dict[str, Tensor]:
    """{attack: per-sample robust flags} at one eps; ``cached(key, compute)`` may keep results on disk."""
    attack_options, flags, robust = attack_options or {}, {}, clean.clone()
    for attack in attacks:

        def compute(attack=attack, robust=robust):
            if attack not in ON_SURVIVORS:
                return attack_flags(
                    model, loader, attack, eps, device, options=attack_options.get(attack), progress=progress
                )
            survivors = robust.nonzero().squeeze(1).tolist()
            flags = torch.zeros_like(robust)
            if survivors:
                subset = DataLoader(Subset(loader.dataset, survivors), batch_size=loader.batch_size)
                flags[survivors] = attack_flags(
                    model, subset, attack, eps, device, options=attack_options.get(attack), progress=progress
                )
            return flags

        key = f"white_{attack}_{eps:g}" + ("_survivors" if attack in ON_SURVIVORS else "")
        flags[attack] = cached(key, compute)
        robust = robust & flags[attack]
    return flags


def robust_summary(
    clean: Tensor, flags: dict[tuple[str, float], Tensor], attacks: Sequence[str], eps_values: Sequence[float]
) -> dict:
    """The accuracies of per-sample flags: clean, per attack and eps, and the per-sample worst case."""

    def worst(chosen):
        return {e: summarize(clean, torch.stack([flags[(a, e)] for a in chosen]).all(0)) for e in eps_values}

    summary = {
        "samples": len(clean),
        "clean": clean.float().mean().item(),
        "attacks": {a: {e: summarize(clean, flags[(a, e)]) for e in eps_values} for a in attacks},
        "worst": worst(attacks),
    }
    before_survivor_attacks = [a for a in attacks if a not in ON_SURVIVORS]
    if before_survivor_attacks and len(before_survivor_attacks) < len(attacks):  # what Square adds is a masking signal
        summary["worst_gradient"] = worst(before_survivor_attacks)
    return summary


def summarize(clean: Tensor, robust: Tensor) -> dict:
    """Accuracy over every sample ("all") and over the clean-correct ones (PDD's convention)."""
    return {
        "all": robust.float().mean().item(),
        "clean_correct": robust[clean].float().mean().item() if clean.any() else 0.0,
    }


def robust_accuracy(
    model: nn.Module,
    loader: DataLoader,
    attacks: Sequence[str],
    eps_values: Iterable[float],
    device: torch.device,
    attack_options: dict[str, dict] | None = None,
    progress: bool = True,
) -> dict:
    """{"samples", "clean", "attacks": {attack: {eps: {"all", "clean_correct"}}}, "worst": {eps: {...}}}."""
    eps_values = list(eps_values)
    clean = correct_flags(model, loader, device)
    flags = {
        (a, e): f
        for e in eps_values
        for a, f in white_box_flags(model, loader, clean, attacks, e, device, attack_options, progress).items()
    }
    return robust_summary(clean, flags, attacks, eps_values)


def transfer_matrix(
    members: Sequence[nn.Module],
    loader: DataLoader,
    eps: float,
    device: torch.device,
    attack: str = "pgd",
    options: dict | None = None,
    progress: bool = True,
) -> Tensor:
    """(M, M) matrix: entry (i, j) is member j's accuracy on examples crafted on member i alone."""
    rows = []
    for source in members:
        crafted = craft(source, loader, attack, eps, device, options, progress)
        rows.append([still_correct(member, crafted).float().mean().item() for member in members])
    return torch.tensor(rows)


def transferability_success_rate(matrix: Tensor) -> float:
    """TSR = (1/M) sum_i sum_{j != i} 100 (1 - acc_ij) (paper eq 12); 0 (nothing transfers) to 100 (M-1)."""
    members = matrix.shape[0]
    off_diagonal = ~torch.eye(members, dtype=torch.bool)
    return float((100 * (1 - matrix[off_diagonal])).sum() / members)
