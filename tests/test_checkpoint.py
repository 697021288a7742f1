"""Checkpoints never run code: weights_only loading everywhere, clear errors, old formats upgraded."""

import dataclasses
import os
import warnings
from pathlib import Path

import pytest
import torch
from conftest import train_edlcm

from edlcm_ext.cli import main as cli_main
from edlcm_ext.loss.hvp_curvature_loss import DEFAULT_H, DEFAULT_MAX_PULL, DEFAULT_MAX_RATIO
from edlcm_ext.training.checkpoint import (
    CheckpointError,
    atomic_save,
    build_ensemble,
    load_checkpoint,
    load_data_file,
    read_checkpoint,
)
from edlcm_ext.training.config import TrainConfig
from edlcm_ext.training.data import DIGITS_INFO
from edlcm_ext.training.trainer import train


class CreatesFileWhenUnpickled:
    """A pickle payload: unpickling calls open(path, "w"), which creates the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def payload_checkpoint(tmp_path):
    marker = str(tmp_path / "payload-ran")
    path = str(tmp_path / "evil.pt")
    ensemble = build_ensemble(TrainConfig(method="base", dataset="digits"), DIGITS_INFO)
    torch.save(
        {
            "epoch": 0,
            "ensemble": ensemble.state_dict(),
            "config": {"method": "base", "payload": CreatesFileWhenUnpickled(marker)},
            "info": dataclasses.asdict(DIGITS_INFO),
        },
        path,
    )
    assert not os.path.exists(marker)
    return path, marker


def test_pickle_payload_does_not_run_through_the_python_api(tmp_path):
    path, marker = payload_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=f"{path}: refused to load: it holds Python objects"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_data_file(path)
    assert not os.path.exists(marker)


def test_pickle_payload_does_not_run_through_the_cli(tmp_path, capsys):
    path, marker = payload_checkpoint(tmp_path)
    code = cli_main(
        ["eval", "--checkpoint", path, "--out-dir", str(tmp_path / "eval"), "--no-progress", "--device", "cpu"]
    )
    assert code == 2
    assert f"edlcm eval: error: {path}: refused to load" in capsys.readouterr().err
    assert not os.path.exists(marker)


def test_pickle_payload_does_not_run_on_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    path, marker = payload_checkpoint(tmp_path)
    os.replace(path, run / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="refused to load"):
        train(
            TrainConfig(method="base", dataset="digits", epochs=1, out_dir=str(run), progress=False, device="cpu"),
            resume=True,
        )
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"weights": torch.zeros(2)}, r"not an edlcm-ext trainer checkpoint \(expected keys"),
        ([1, 2, 3], "not an edlcm-ext trainer checkpoint"),
        (b"not a zip", "not a readable torch checkpoint"),
    ],
)
def test_files_that_are_not_our_checkpoints_get_one_clear_error(tmp_path, content, message):
    path = str(tmp_path / "other.pt")
    if isinstance(content, bytes):
        with open(path, "wb") as out:
            out.write(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=f"{path}: {message}"):
        read_checkpoint(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such file"):
        read_checkpoint(str(tmp_path / "nope.pt"))


def test_checkpoints_we_write_load_with_weights_only_and_record_the_convention(tmp_path):
    train_edlcm(tmp_path / "run", every=2)
    raw = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert raw["format"] == 5 and raw["config"]["method_options"] == {
        "alpha": 1.0,
        "beta": 0.01,
        "h": DEFAULT_H,
        "reduction": "per_sample",
        "max_ratio": DEFAULT_MAX_RATIO,
        "max_pull": DEFAULT_MAX_PULL,
        "every": 2,
    }
    assert raw["method_state"]["_extra_state"]["calls"] == 2  # 128 images / batch 64


def test_a_resumed_lazy_run_regularizes_on_the_same_calls_as_an_uninterrupted_one(tmp_path):
    """every=3 over two epochs of two batches: calls 0 and 3 regularize. Stopped after epoch 1 and
    resumed, the schedule's counter comes back from the checkpoint, so the weights end bit-identical
    (a counter reset to 0 would regularize call 2 instead of 3)."""
    train_edlcm(tmp_path / "whole", epochs=2, every=3)
    train_edlcm(tmp_path / "split", epochs=2, stop_after=1, every=3)
    train_edlcm(tmp_path / "split", epochs=2, resume=True, every=3)
    whole, split = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in ("whole", "split"))
    assert whole["method_state"]["_extra_state"]["calls"] == split["method_state"]["_extra_state"]["calls"] == 4
    assert whole["ensemble"].keys() == split["ensemble"].keys()
    assert all(torch.equal(whole["ensemble"][key], split["ensemble"][key]) for key in whole["ensemble"])


def test_old_format_edlcm_checkpoint_loads_as_the_sum_convention(tmp_path):
    """Format-1 checkpoints (before `reduction` existed) were trained under "sum" (now "per_sample"),
    with h 0.1 and no cap."""
    train_edlcm(tmp_path / "run")
    path = str(tmp_path / "run" / "checkpoint.pt")
    old = torch.load(path, weights_only=True)
    del old["format"], old["method_state"]
    old["config"]["method_options"] = {}
    atomic_save(old, path)
    _, config, _, _ = load_checkpoint(path)
    assert config.method_options == {
        "reduction": "per_sample",
        "h": 0.1,
        "max_ratio": None,
        "max_pull": None,
        "every": 1,
    }


@pytest.mark.parametrize("reduction, expected", [("sum", "per_sample"), ("mean", "mean")])
def test_format_2_checkpoints_load_with_the_options_they_were_trained_with(tmp_path, reduction, expected):
    """Format 2 recorded only the convention: h was 0.1 and there was no cap then; "sum" is now "per_sample".
    The resumed run trains on with those options, not today's defaults."""
    out = tmp_path / "run"
    train_edlcm(out)
    path = str(out / "checkpoint.pt")
    old = torch.load(path, weights_only=True)
    old["format"] = 2
    old["config"]["method_options"] = {"reduction": reduction}
    atomic_save(old, path)
    _, config, _, _ = load_checkpoint(path)
    assert config.method_options == {"h": 0.1, "max_ratio": None, "max_pull": None, "every": 1, "reduction": expected}
    train_edlcm(out, epochs=2, resume=True)
    resumed = torch.load(path, weights_only=True)
    assert resumed["format"] == 5
    assert resumed["config"]["method_options"] == {
        "alpha": 1.0,
        "beta": 0.01,
        "h": 0.1,
        "reduction": expected,
        "max_ratio": None,
        "max_pull": None,
        "every": 1,
    }


def trained_checkpoint_as_format(tmp_path, version: int) -> tuple[str, dict]:
    """A one-epoch EDLCM run in tmp_path/run, its checkpoint's path and its contents marked as format
    ``version`` (the caller edits them into what that format held, then saves them)."""
    train_edlcm(tmp_path / "run")
    path = str(tmp_path / "run" / "checkpoint.pt")
    old = torch.load(path, weights_only=True)
    old["format"] = version
    return path, old


def test_format_3_checkpoints_load_without_a_bound_on_the_pull(tmp_path):
    """Format 3 recorded every knob but max_pull, which did not exist: those runs had no bound, whatever
    today's default."""
    path, old = trained_checkpoint_as_format(tmp_path, 3)
    del old["config"]["method_options"]["max_pull"]
    atomic_save(old, path)
    _, config, _, _ = load_checkpoint(path)
    assert config.method_options["max_pull"] is None and config.method_options["max_ratio"] == DEFAULT_MAX_RATIO


def test_format_4_checkpoints_keep_the_exact_step(tmp_path):
    """Format 4 did not record ``every``: such a run regularized every step unless --set every=k was
    given (and so recorded), whatever today's default."""
    path, old = trained_checkpoint_as_format(tmp_path, 4)
    del old["config"]["method_options"]["every"]
    atomic_save(old, path)
    assert load_checkpoint(path)[1].method_options["every"] == 1
    old["config"]["method_options"]["every"] = 4
    atomic_save(old, path)
    assert load_checkpoint(path)[1].method_options["every"] == 4


def test_a_run_trained_with_a_removed_option_loads_with_a_note_and_refuses_to_resume(tmp_path):
    """alpha_warmup left HvpCurvatureLoss in 0.4: a checkpoint that used it loads for evaluation with a
    warning naming it, and resuming it fails in one line naming it; one that left it at its no-effect
    value loads silently."""
    path, old = trained_checkpoint_as_format(tmp_path, 4)
    old["config"]["method_options"].update(alpha_warmup=100, batch_fraction=1.0)
    atomic_save(old, path)
    with pytest.warns(UserWarning, match=r"trained with alpha_warmup=100, removed from HvpCurvatureLoss in 0.4"):
        _, config, _, _ = load_checkpoint(path)
    assert "alpha_warmup" not in config.method_options and "batch_fraction" not in config.method_options
    with pytest.raises(ValueError, match=r"^--resume: .*alpha_warmup=100.*cannot go on as it was trained"):
        train_edlcm(tmp_path / "run", epochs=2, resume=True)
    old["config"]["method_options"]["alpha_warmup"] = 0
    atomic_save(old, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(path)


def test_the_committed_warmup_run_still_loads():
    """results/defaults_sweep/runs/warmup100 was trained with alpha_warmup=100 (format 4)."""
    path = Path(__file__).resolve().parents[1] / "results/defaults_sweep/runs/warmup100/checkpoint.pt"
    with pytest.warns(UserWarning, match="alpha_warmup=100"):
        ensemble, config, _, _ = load_checkpoint(str(path))
    assert config.method_options["every"] == 1 and len(ensemble.members) == 3
