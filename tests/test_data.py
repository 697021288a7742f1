"""Every dataset loader, on small files written in each dataset's real format."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from edlcm_ext.training.data import load_dataset


def write_cifar(root, batches, label_key, meta_name, meta_key, classes, per_batch=4):
    folder = root
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for name in batches:
        entry = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            label_key: list(rng.integers(0, classes, per_batch)),
        }
        with open(os.path.join(folder, name), "wb") as out:
            pickle.dump(entry, out)
    with open(os.path.join(folder, meta_name), "wb") as out:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, out)


def test_cifar10_in_torchvision_format(tmp_path):
    write_cifar(
        tmp_path / "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
        "labels",
        "batches.meta",
        "label_names",
        10,
    )
    train, info = load_dataset("cifar10", str(tmp_path), train=True)
    test, _ = load_dataset("cifar10", str(tmp_path), train=False)
    assert (len(train), len(test), info.num_classes) == (20, 4, 10)
    image, label = train[0]
    assert image.shape == (3, 32, 32) and 0 <= image.min() and image.max() <= 1 and 0 <= label < 10


def test_cifar100_in_torchvision_format(tmp_path):
    write_cifar(tmp_path / "cifar-100-python", ["train", "test"], "fine_labels", "meta", "fine_label_names", 100)
    train, info = load_dataset("cifar100", str(tmp_path), train=True)
    assert len(train) == 4 and info.num_classes == 100 and train[0][0].shape == (3, 32, 32)


def test_missing_cifar_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="Dataset not found"):
        load_dataset("cifar10", str(tmp_path), train=True)
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("cifar10", None, train=True)


def save_image(path, size, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)


def test_tiny_imagenet_layout(tmp_path):
    wnids = ["n01443537", "n01629819"]
    for index, wnid in enumerate(wnids):
        for k in range(2):
            save_image(tmp_path / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", 64, 40 * index + k)
    annotations = []
    for k, wnid in enumerate(wnids[::-1]):
        save_image(tmp_path / "val" / "images" / f"val_{k}.JPEG", 64, 100 + k)
        annotations.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63\n")
    (tmp_path / "val" / "val_annotations.txt").write_text("".join(annotations))
    train, info = load_dataset("tinyimagenet", str(tmp_path), train=True)
    val, _ = load_dataset("tinyimagenet", str(tmp_path), train=False)
    assert len(train) == 4 and info.num_classes == 200
    assert [label for _, label in val] == [1, 0]  # labelled from the annotations, in train's class order
    assert val[0][0].shape == (3, 64, 64)


def test_imagefolder_tree(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for label in ("cat", "dog"):
            for k in range(count):
                save_image(tmp_path / split / label / f"{k}.jpg", 16, 10 * k)
    train, info = load_dataset("imagefolder", str(tmp_path), train=True)
    test, _ = load_dataset("imagefolder", str(tmp_path), train=False)
    assert (len(train), len(test), info.num_classes, info.image_size) == (6, 4, 2, 16)
    assert train[0][0].shape == (3, 16, 16)


def test_embedded_digits_split_is_disjoint_and_fixed():
    train, info = load_dataset("digits", None, train=True)
    test, _ = load_dataset("digits", None, train=False)
    assert len(train) + len(test) == 1797 and info.num_classes == 10
    assert train[0][0].shape == (1, 8, 8) and train.tensors[0].max() <= 1
    again, _ = load_dataset("digits", None, train=False)
    assert torch.equal(test.tensors[0], again.tensors[0])
