import pytest
import torch

from edlcm_ext.training.config import TrainConfig
from edlcm_ext.training.trainer import train

CUDA_SKIP_REASON = "CUDA kernels need a GPU; none is visible on this machine"

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON)),
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def small_bn_cnn(classes: int = 5, channels: int = 3) -> torch.nn.Module:
    """A conv-BN-ReLU network small enough for float64 gradient checks."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(6, affine=False),
        torch.nn.Softplus(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, classes),
    )


def ensemble(members: int = 3, dtype=torch.float64, device="cpu", **kwargs) -> list[torch.nn.Module]:
    return [small_bn_cnn(**kwargs).to(device=device, dtype=dtype) for _ in range(members)]


def batch(size: int = 6, classes: int = 5, dtype=torch.float64, device="cpu", hw: int = 8):
    x = torch.rand(size, 3, hw, hw, dtype=dtype, device=device)
    y = torch.randint(0, classes, (size,), device=device)
    return x, y


def parameter_grads(models, loss):
    """d loss / d every parameter of every member, in order."""
    return torch.autograd.grad(loss, [p for m in models for p in m.parameters()])


def train_edlcm(
    out, epochs: int = 1, resume: bool = False, compile: bool = False, stop_after: int | None = None, **method_options
):
    """An EDLCM run on 128 digits, its checkpoint at out/checkpoint.pt (``stop_after``: as train's)."""
    config = TrainConfig(
        method="edlcm",
        dataset="digits",
        epochs=epochs,
        train_subset=128,
        out_dir=str(out),
        progress=False,
        device="cpu",
        compile=compile,
        method_options=method_options,
    )
    return train(config, resume=resume, stop_after=stop_after)
