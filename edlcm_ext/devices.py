"""One place that turns a device name from the user (auto, cpu, cuda, cuda:N) into a torch.device."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """ "auto": the GPU if one is visible, else the CPU; a bare "cuda" is this process's GPU under
    torchrun (its LOCAL_RANK). ValueError names what is wrong with a name this machine cannot serve."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"invalid device {name!r}; choose auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name!r}: no CUDA device is visible on this machine; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
