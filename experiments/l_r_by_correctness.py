"""Where L_r sits on trained members: the share of sum |u|^2 carried by the member-samples a member
misclassifies (docs/results.md, the clean price's mechanism 1; edlcm_ext.evaluation.curvature).

    python experiments/l_r_by_correctness.py --data-dir ../shared/data/cifar10-jpeg \
        results/cifar10_full/runs/edlcm/checkpoint.pt results/cifar10_full/runs/base/checkpoint.pt

On --images training images (a fixed random subset, augmented and in train mode, as in a step; the
members' BatchNorm statistics move on the loaded copy only), at HvpCurvatureLoss's h.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from edlcm_ext.evaluation.curvature import l_r_by_correctness
from edlcm_ext.loss.hvp_curvature_loss import DEFAULT_H
from edlcm_ext.training.checkpoint import load_checkpoint
from edlcm_ext.training.data import fixed_subset, load_dataset


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--h", type=float, default=DEFAULT_H)
    args = parser.parse_args(argv)
    dataset, _ = load_dataset(args.dataset, args.data_dir, train=True)
    torch.manual_seed(0)  # the same augmentations for every checkpoint
    # Shuffled: the subset is in folder (class) order, and a one-class batch would skew train-mode BatchNorm.
    shuffle = torch.Generator().manual_seed(0)
    batches = list(
        DataLoader(fixed_subset(dataset, args.images), batch_size=args.batch_size, shuffle=True, generator=shuffle)
    )
    print("| checkpoint | member-samples | misclassified | their share of L_r | their mean |u|² / the correct ones' |")
    print("|---|---|---|---|---|")
    rows = []
    for path in args.checkpoints:
        ensemble, _, _, _ = load_checkpoint(path)
        row = l_r_by_correctness(list(ensemble.train().members), batches, args.h)
        print(
            f"| {path} | {row['member_samples']} | {100 * row['misclassified_fraction']:.0f}% "
            f"| {100 * row['misclassified_l_r_share']:.0f}% | {row['sq_norm_ratio']:.2f} |"
        )
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
