"""Datasets: CIFAR-10/100 (torchvision's format), Tiny-ImageNet (its standard folder layout), any
ImageFolder tree, and an embedded default (scikit-learn's 8x8 digits) that needs no download.

Images are tensors in [0, 1]; normalization, where a dataset has standard statistics, is done by
the model (see edlcm_ext.models), so attacks work in pixel units. Nothing is downloaded unless
``download=True``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Subset, TensorDataset
from torchvision import datasets, transforms
from torchvision.datasets.folder import default_loader


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool = True  # random crop (pad 4) + horizontal flip for natural images


CIFAR10_INFO = DatasetInfo(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_INFO = DatasetInfo(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
TINY_IMAGENET_INFO = DatasetInfo(200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821))
DIGITS_INFO = DatasetInfo(10, 1, 8, augment=False)
DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet", "imagefolder")


def _presence_only(file_list):
    # md5 None: torchvision then checks that the file exists, so re-packed copies load too.
    return [[name, None] for name, _ in file_list]


class LocalCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader over ``root/cifar-10-batches-py``, checking presence, not md5."""

    train_list, test_list = _presence_only(datasets.CIFAR10.train_list), _presence_only(datasets.CIFAR10.test_list)
    meta = {**datasets.CIFAR10.meta, "md5": None}


class LocalCIFAR100(datasets.CIFAR100):
    """torchvision's CIFAR-100 reader over ``root/cifar-100-python``, checking presence, not md5."""

    train_list, test_list = _presence_only(datasets.CIFAR100.train_list), _presence_only(datasets.CIFAR100.test_list)
    meta = {**datasets.CIFAR100.meta, "md5": None}


class TinyImageNetValidation(Dataset):
    """Tiny-ImageNet's val split: ``val/images/*.JPEG`` labelled by ``val/val_annotations.txt``."""

    def __init__(self, root: str, class_to_idx: dict[str, int], transform: Callable | None = None) -> None:
        annotations = os.path.join(root, "val", "val_annotations.txt")
        if not os.path.isfile(annotations):
            raise FileNotFoundError(f"Tiny-ImageNet validation labels not found: {annotations}")
        with open(annotations) as lines:
            rows = [line.split("\t")[:2] for line in lines if line.strip()]
        self.samples = [(os.path.join(root, "val", "images", name), class_to_idx[wnid]) for name, wnid in rows]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = default_loader(path)
        return (self.transform(image) if self.transform else image), label


def digits_split(train: bool, test_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to [0, 1]), a fixed shuffled split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    test_size = int(round(len(labels) * test_fraction))
    chosen = order[test_size:] if train else order[:test_size]
    return TensorDataset(images[chosen], labels[chosen])


def fixed_subset(dataset: Dataset, size: int) -> Dataset:
    """The same random ``size`` samples on every call (folder datasets are sorted by class, so a
    prefix would hold only the first classes); the whole dataset when size is 0 or too large."""
    if not size or size >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:size]
    return Subset(dataset, order.sort().values.tolist())


def image_transform(info: DatasetInfo, train: bool):
    steps = []
    if train and info.augment:
        steps += [transforms.RandomCrop(info.image_size, padding=4), transforms.RandomHorizontalFlip()]
    return transforms.Compose(steps + [transforms.ToTensor()])


def _folder_split(root: str, train: bool) -> str:
    names = ("train",) if train else ("test", "val")
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise FileNotFoundError(f"no {' or '.join(names)} folder under {root}")


def load_dataset(name: str, data_dir: str | None, train: bool, download: bool = False) -> tuple[Dataset, DatasetInfo]:
    """(dataset of (image in [0, 1], label), its DatasetInfo) for one split."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if name == "digits":
        return digits_split(train), DIGITS_INFO
    if not data_dir:
        raise ValueError(f"dataset {name!r} needs --data-dir")
    if name in ("cifar10", "cifar100"):
        info, reader = (CIFAR10_INFO, LocalCIFAR10) if name == "cifar10" else (CIFAR100_INFO, LocalCIFAR100)
        return reader(data_dir, train=train, transform=image_transform(info, train), download=download), info
    if download:
        raise ValueError(f"dataset {name!r} cannot be downloaded; point --data-dir at a local copy")
    if name == "tinyimagenet":
        train_set = datasets.ImageFolder(
            os.path.join(data_dir, "train"), transform=image_transform(TINY_IMAGENET_INFO, train)
        )
        if train:
            return train_set, TINY_IMAGENET_INFO
        return TinyImageNetValidation(
            data_dir, train_set.class_to_idx, image_transform(TINY_IMAGENET_INFO, False)
        ), TINY_IMAGENET_INFO
    # Any ImageFolder tree with train/ and test/ (or val/) splits, e.g. the CIFAR-10 JPEG copy.
    probe = datasets.ImageFolder(_folder_split(data_dir, train))
    width, height = default_loader(probe.samples[0][0]).size
    if width != height:
        raise ValueError(f"imagefolder: images must be square, got {width}x{height}")
    info = DatasetInfo(len(probe.classes), 3, width)
    probe.transform = image_transform(info, train)
    return probe, info
