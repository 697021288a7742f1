"""What a training run is: the trainer's configuration, saved in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    method: str = "edlcm"
    arch: str = "small_cnn"
    width: int = 1  # channel multiplier of the architectures that take one (small_cnn); 1 for older runs
    members: int = 3
    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_lr: float = 1e-4
    seed: int = 0
    train_subset: int = 0  # train on a fixed random subset of N images (0: all), for fixed CPU budgets
    out_dir: str = "runs/edlcm"
    device: str = "auto"
    workers: int = 0
    # Members and batches in channels_last (NHWC): the faster layout for convolutions on CPU (oneDNN)
    # and on GPU tensor cores; the same training up to float rounding, the checkpoint is layout-free.
    channels_last: bool = False
    # The method's loss through torch.compile (edlcm_ext.loss.compiled): the same gradients as a few
    # generated kernels (CUDA graphs on a GPU), at a one-off compile cost per run.
    compile: bool = False
    method_options: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    # Steps between reads of the step logs and the non-finite check (each read is a host sync on a
    # GPU); a non-finite loss is still reported with its exact step, and the checkpoint written at
    # the end of an epoch never holds weights updated after it.
    log_every: int = 20
