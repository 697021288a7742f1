from pathlib import Path

import pytest
import torch

from edlcm_ext.models import MODELS, build_model
from edlcm_ext.models.ensemble import Ensemble
from edlcm_ext.models.layers import Classifier
from edlcm_ext.models.resnet import BasicBlock


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_architecture_maps_images_to_logits(arch):
    model = build_model(arch, num_classes=7, in_channels=3).eval()
    assert isinstance(model, Classifier)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    assert model.body(x).shape == (2, model.classifier.in_features)


@pytest.mark.parametrize("arch", ["resnet20", "resnet18", "resnet34"])
def test_residual_blocks_start_as_their_shortcut(arch):
    """Zero-init residual: at initialization every block is relu(shortcut(x)), in train and eval mode."""
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert blocks
    seen = []
    for block in blocks:
        block.register_forward_hook(
            lambda block, inputs, output: seen.append((output, block.shortcut(inputs[0]).relu()))
        )
    for mode in (True, False):
        model.train(mode)
        model(torch.rand(2, 3, 16, 16))
    assert len(seen) == 2 * len(blocks)
    for output, shortcut in seen:
        torch.testing.assert_close(output, shortcut, rtol=0, atol=0)


def test_vgg_linear_layer_has_torchvisions_init():
    """N(0, 0.01) weights and zero bias (PyTorch's default would be U(+-1/sqrt(512)), std 0.026)."""
    torch.manual_seed(0)
    classifier = build_model("vgg16_bn", num_classes=10).classifier
    assert classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)  # 5120 draws: ~1% spread
    assert classifier.weight.mean().abs().item() < 0.001
    assert torch.equal(classifier.bias, torch.zeros(10))


def test_small_inputs_and_grayscale():
    model = build_model("small_cnn", num_classes=10, in_channels=1).eval()
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_normalization_lives_inside_the_model():
    torch.manual_seed(0)
    plain = build_model("small_cnn", 10)
    torch.manual_seed(0)
    normalized = build_model("small_cnn", 10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(normalized.eval()(x), plain.eval()((x - 0.5) / 0.25))


def test_unknown_arch_is_rejected():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_model("resnet1000", 10)


def test_ensemble_outputs_log_of_mean_softmax():
    members = [build_model("small_cnn", 5).eval() for _ in range(3)]
    ensemble = Ensemble(members)
    x = torch.rand(4, 3, 16, 16)
    expected = torch.stack([m(x).softmax(1) for m in members]).mean(0)
    torch.testing.assert_close(ensemble(x).exp(), expected)
    assert torch.equal(ensemble.predict(x), expected.argmax(1))


def conv_channels(model):
    return [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_small_cnn_width_multiplies_every_stage_and_width_1_is_the_original():
    """Width 1 is the architecture every committed small_cnn checkpoint was trained with: 16, 32, 64
    channels, 3x3 convolutions without bias, BatchNorm, a 64 -> classes linear layer (24,346 parameters
    at 10 classes, written out here)."""
    original = build_model("small_cnn", 10)
    assert conv_channels(original) == [16, 32, 64] and original.classifier.in_features == 64
    assert (
        sum(p.numel() for p in original.parameters())
        == 3 * 9 * 16 + 16 * 9 * 32 + 32 * 9 * 64 + 2 * (16 + 32 + 64) + 650
    )
    wide = build_model("small_cnn", 10, width=4)
    assert conv_channels(wide) == [64, 128, 256] and wide.classifier.in_features == 256
    assert wide(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_committed_width_1_checkpoint_loads_unchanged(tmp_path):
    """A checkpoint written before the width option (no 'width' in its config) loads strictly as width 1."""
    from edlcm_ext.training.checkpoint import load_checkpoint, read_checkpoint

    path = str(Path(__file__).resolve().parents[1] / "results/cifar10_full/runs/base/checkpoint.pt")
    assert "width" not in read_checkpoint(path)["config"]
    ensemble, config, _, _ = load_checkpoint(path)
    assert config.width == 1 and conv_channels(ensemble.members[0]) == [16, 32, 64]


@pytest.mark.parametrize("width, arch, match", [(2, "resnet20", "no width multiplier"), (0, "small_cnn", ">= 1")])
def test_bad_width_names_width(width, arch, match):
    with pytest.raises(ValueError, match=f"width.*{match}"):
        build_model(arch, 10, width=width)
