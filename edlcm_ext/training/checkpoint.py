"""Checkpoint files: written atomically, read without running any code.

Every file we read (trainer checkpoints, eval caches) goes through ``torch.load(weights_only=True)``,
which unpickles only tensors and plain containers (dict, list, tuple, str, numbers, bool, None), so a
shared checkpoint carrying a pickle payload is refused before anything in it runs. What we save is
made of exactly those types.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile
from typing import Any

import torch

from ..models import build_model
from ..models.ensemble import Ensemble
from .config import TrainConfig
from .data import DatasetInfo

# 2: method_options record the L_r convention ("reduction") and the method's state is saved.
# 3: method_options record every knob of the regularizer's strength (alpha, beta, h, reduction,
#    max_ratio); the convention once called "sum" is named "per_sample".
# 4: ... and max_pull.
# 5: ... and every (the regularizer's schedule); options removed in 0.4 are dropped on reading.
FORMAT_VERSION = 5
REQUIRED_KEYS = ("epoch", "ensemble", "config", "info")
# Methods whose meaning depends on HvpCurvatureLoss's options. Checkpoints written before the
# convention was recorded (format 1) were trained under "sum", the only one that existed then;
# before format 3, h was 0.1 and there was no cap; before format 4, no bound on the pull; before
# format 5 the regularizer ran on every step unless `every` was set (and so recorded).
CURVATURE_METHODS = ("edlcm", "edlcm_lr", "edlcm_lg")
OLD_DEFAULTS = {
    1: {"reduction": "per_sample", "h": 0.1, "max_ratio": None, "max_pull": None, "every": 1},
    2: {"h": 0.1, "max_ratio": None, "max_pull": None, "every": 1},
    3: {"max_pull": None, "every": 1},
    4: {"every": 1},
}
# HvpCurvatureLoss options removed in 0.4 (CHANGELOG.md), with the value at which each changed nothing.
REMOVED_OPTIONS = {
    "eps": 1e-8,  # now ops.curvature_stats' fixed clamp
    "batch_fraction": 1.0,
    "alpha_warmup": 0,
    "gradient": "exact",
    "fd_step": 1e-2,
    "autocast_regularizer": False,
}
RENAMED_REDUCTIONS = {"sum": "per_sample"}


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint of ours; the message names the path and the problem."""


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", suffix=".pt", delete=False) as handle:
        try:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


def load_data_file(path: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with one clear error naming the path when the file is
    missing, unreadable, or holds anything but tensors and plain data (nothing in it is run)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        detail = detail.group(1).strip() if detail else str(error).strip()
        if "Unsupported global" not in detail:
            raise CheckpointError(f"{path}: not a readable torch checkpoint ({detail})") from None
        found = re.search(r"GLOBAL (\S+)", detail)
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain data "
            f"({found.group(1) if found else detail}), which could run code when unpickled; nothing in it was run. "
            f"edlcm-ext checkpoints never do. If you trust the file and it is an old checkpoint of ours, re-save it: "
            f"c = torch.load(path, weights_only=False); turn its other values into dicts/lists/numbers/strings; torch.save(c, path)."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})") from None


def read_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """A trainer checkpoint as a dict, checked for our keys and upgraded to FORMAT_VERSION."""
    checkpoint = load_data_file(path, map_location)
    if not isinstance(checkpoint, dict) or not all(key in checkpoint for key in REQUIRED_KEYS):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"{path}: not an edlcm-ext trainer checkpoint (expected keys {list(REQUIRED_KEYS)}, found {found})"
        )
    if not isinstance(checkpoint["config"], dict) or not isinstance(checkpoint["info"], dict):
        raise CheckpointError(f"{path}: not an edlcm-ext trainer checkpoint (config and info must be dicts)")
    version, config = checkpoint.get("format", 1), checkpoint["config"]
    if version < FORMAT_VERSION and config.get("method") in CURVATURE_METHODS:
        options = {**OLD_DEFAULTS[version], **config.get("method_options", {})}
        options["reduction"] = RENAMED_REDUCTIONS.get(options["reduction"], options["reduction"])
        removed = {key: options.pop(key) for key in list(options) if key in REMOVED_OPTIONS}
        # Set at a value that changed something: the run cannot go on as it was trained.
        checkpoint["removed_options"] = {key: value for key, value in removed.items() if value != REMOVED_OPTIONS[key]}
        config["method_options"] = options
    checkpoint["format"] = FORMAT_VERSION
    return checkpoint


def removed_options_note(path: str, checkpoint: dict) -> str:
    """What changed for a run trained with options removed since ("" if none)."""
    removed = checkpoint.get("removed_options") or {}
    if not removed:
        return ""
    settings = ", ".join(f"{key}={value!r}" for key, value in removed.items())
    return f"{path} was trained with {settings}, removed from HvpCurvatureLoss in 0.4 (CHANGELOG.md)"


def load_checkpoint(path: str, device: str = "cpu") -> tuple[Ensemble, TrainConfig, DatasetInfo, dict]:
    """(ensemble in eval mode, its TrainConfig, DatasetInfo, the raw checkpoint) from a trainer checkpoint."""
    checkpoint = read_checkpoint(path, device)
    if note := removed_options_note(path, checkpoint):
        warnings.warn(f"{note}: its weights load as trained; only resuming its training is not possible", stacklevel=2)
    config = TrainConfig(**checkpoint["config"])
    info = DatasetInfo(**checkpoint["info"])
    ensemble = build_ensemble(config, info).to(device)
    ensemble.load_state_dict(checkpoint["ensemble"])
    return ensemble.eval(), config, info, checkpoint


def build_ensemble(config: TrainConfig, info: DatasetInfo) -> Ensemble:
    """config.members freshly initialized members of config.arch for the dataset described by info."""
    return Ensemble(
        [
            build_model(config.arch, info.num_classes, info.in_channels, info.mean, info.std, config.width)
            for _ in range(config.members)
        ]
    )
