"""What a newcomer's mistakes get from the CLI: every bad value is refused before any work starts,
with exit code 2, one line naming the flag and what it accepts, and nothing written."""

import os
import re

import pytest
import torch

from edlcm_ext.cli import main as cli_main

TRAIN = ["train", "--dataset", "digits", "--epochs", "1", "--train-subset", "128", "--no-progress"]


def run_cli(args, capsys):
    """(exit code, stderr) of one CLI call, whether it returns or exits."""
    try:
        code = cli_main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


BAD_TRAIN = [
    (["--epochs", "0"], "--epochs", ">= 1"),
    (["--epochs", "-1"], "--epochs", ">= 1"),
    (["--epochs", "two"], "--epochs", "an integer"),
    (["--train-subset", "-5"], "--train-subset", ">= 0"),
    (["--batch-size", "0"], "--batch-size", ">= 1"),
    (["--lr", "-1"], "--lr", "> 0"),
    (["--lr", "nan"], "--lr", "> 0"),
    (["--momentum", "1.5"], "--momentum", "< 1"),
    (["--weight-decay", "-0.1"], "--weight-decay", ">= 0"),
    (["--members", "0"], "--members", ">= 1"),
    (["--method", "edlcm", "--members", "1"], "--members", "needs >= 2"),
    (["--method", "gal", "--members", "1"], "--members", "needs >= 2"),
    (["--workers", "-1"], "--workers", ">= 0"),
    (["--set", "nosuchkey=1"], "--set", "alpha=1.0, beta=0.01, h=0.1"),
    (["--method", "base", "--set", "alpha=2"], "--set", "its options \\(defaults\\): none"),
    (["--set", "h=-1"], "--set", "h must be a positive"),
    (["--dataset", "cifar10", "--data-dir", "/missing"], "--data-dir", "--download"),
    (["--dataset", "imagefolder"], "--data-dir", "needs the folder"),
    (["--method", "magic"], "--method", "choose from"),
    (["--arch", "resnet20", "--width", "2"], "--width", "no width multiplier"),
    (["--width", "0"], "--width", ">= 1"),
    (["--method", "at", "--set", "eps=0"], "--set", "eps must be a positive"),
    (["--method", "trs", "--members", "1"], "--members", "needs >= 2"),
]
if not torch.cuda.is_available():
    BAD_TRAIN.append((["--device", "cuda"], "--device", "no CUDA device is visible"))


@pytest.mark.parametrize("extra, flag, accepts", BAD_TRAIN, ids=[" ".join(case[0]) for case in BAD_TRAIN])
def test_bad_train_values_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, extra, flag, accepts):
    out = tmp_path / "run"
    code, error = run_cli(TRAIN + ["--out-dir", str(out), *extra], capsys)
    assert code == 2
    assert len(error.strip().splitlines()) == 1, error
    assert flag in error, error

    assert re.search(accepts, error), error
    assert not out.exists()


def test_an_existing_run_is_not_overwritten_and_the_default_out_dirs_differ_by_method(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(TRAIN + ["--method", "base"], capsys)[0] == 0
    assert run_cli(TRAIN + ["--method", "edlcm", "--train-subset", "64"], capsys)[0] == 0
    assert sorted(os.listdir(tmp_path / "runs")) == ["base", "edlcm"]
    before = (tmp_path / "runs" / "base" / "checkpoint.pt").stat().st_mtime_ns
    code, error = run_cli(TRAIN + ["--method", "base"], capsys)
    assert code == 2 and "--out-dir" in error and "--resume" in error and len(error.strip().splitlines()) == 1
    assert (tmp_path / "runs" / "base" / "checkpoint.pt").stat().st_mtime_ns == before


BAD_EVAL = [
    (["--eps", "-0.1"], "--eps", "in \\[0, 1\\]"),
    (["--eps", "abc"], "--eps", "comma-separated numbers"),
    (["--max-samples", "-1"], "--max-samples", ">= 0"),
    (["--square-queries", "0"], "--square-queries", ">= 1"),
    (["--attacks", "fgsm,nope"], "--attacks", "unknown attack 'nope'"),
    (["--name", "a", "--name", "b"], "--name", "one per --checkpoint"),
]


@pytest.mark.parametrize("extra, flag, accepts", BAD_EVAL, ids=[" ".join(case[0]) for case in BAD_EVAL])
def test_bad_eval_values_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, extra, flag, accepts):
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"")  # never read: the values are checked first
    out = tmp_path / "eval"
    code, error = run_cli(["eval", "--checkpoint", str(checkpoint), "--out-dir", str(out), *extra], capsys)

    assert code == 2 and len(error.strip().splitlines()) == 1 and flag in error and re.search(accepts, error), error
    assert not out.exists()


def test_eval_of_a_missing_checkpoint_names_it(tmp_path, capsys):
    code, error = run_cli(
        ["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--out-dir", str(tmp_path / "eval")], capsys
    )
    assert code == 2 and "nope.pt: no such file" in error and not (tmp_path / "eval").exists()


def test_help_shows_defaults_and_each_methods_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 10)" in text and "(default: edlcm)" in text  # epochs, method
    assert "edlcm: alpha=1.0, beta=0.01, h=0.1" in text and "gal: lam=0.5" in text
    with pytest.raises(SystemExit):
        cli_main(["eval", "--help"])
    assert "digits 0.05,0.1" in " ".join(capsys.readouterr().out.split())
