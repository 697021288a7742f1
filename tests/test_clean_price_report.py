"""experiments/clean_price_report.py: the capacity study's and the mechanisms' reading rules (as written on
docs/results.md before their runs), the members' size, and the page it writes from committed runs."""

import importlib.util
import json
import os
import shutil

import pytest


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(os.path.dirname(__file__), "..", "experiments", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


clean_price_report = load_script("clean_price_report")


@pytest.mark.parametrize("width", [1, 2])
def test_member_size_counts_small_cnns_parameters_and_multiply_adds_by_hand(width):
    c1, c2, c3 = 16 * width, 32 * width, 64 * width
    # three bias-free 3x3 convolutions, their BatchNorms (weight and bias), the linear head at 10 classes
    parameters = 9 * (3 * c1 + c1 * c2 + c2 * c3) + 2 * (c1 + c2 + c3) + c3 * 10 + 10
    # each convolution at its resolution (32, 16, 8: 2x2 pooling between them), then the head
    multiply_adds = 9 * (32 * 32 * 3 * c1 + 16 * 16 * c1 * c2 + 8 * 8 * c2 * c3) + c3 * 10
    assert clean_price_report.member_size(width) == (parameters, multiply_adds)


@pytest.mark.parametrize(
    "cost, gain, spread, expected",
    [
        ({1: 8.6, 2: 8.0, 4: 6.0}, {1: 23, 2: 22, 4: 20}, 0.2, "**shrinks with capacity**"),  # 6.0 <= 8.6 - 1
        ({1: 8.6, 2: 9.2, 4: 6.0}, {1: 23, 2: 22, 4: 20}, 0.2, "**flat within noise**"),  # C(2) reverses: 9.2 > 9.1
        ({1: 8.6, 2: 8.0, 4: 7.7}, {1: 23, 2: 22, 4: 20}, 0.2, "**flat within noise**"),  # 7.7 > 7.6
        ({1: 8.6, 2: 8.0, 4: 9.6}, {1: 23, 2: 22, 4: 20}, 0.2, "**grows with capacity**"),  # 9.6 >= 8.6 + 1
        ({1: 8.6, 2: 8.0, 4: 6.0}, {1: 23, 2: 22, 4: 20}, 1.5, "**flat within noise**"),  # needs <= 5.6 at n 1.5
        ({1: 8.6, 2: 8.0, 4: 6.0}, {1: 23, 2: 22, 4: 20}, 2.5, "too noisy for the rule"),
    ],
)
def test_capacity_verdict_follows_the_rule_written_before_the_runs(cost, gain, spread, expected):
    verdict = clean_price_report.capacity_verdict(cost, gain, spread)
    assert expected in verdict
    assert "does not make a cheaper method" not in verdict


def test_a_shrinking_cost_with_a_halved_gain_is_not_a_cheaper_method():
    verdict = clean_price_report.capacity_verdict({1: 8.6, 2: 7.0, 4: 3.0}, {1: 23.0, 2: 15.0, 4: 11.0}, 0.2)
    assert "**shrinks with capacity**" in verdict and "does not make a cheaper method" in verdict


@pytest.mark.parametrize(
    "differences, moves",
    [
        ([(2.5, -0.5), (2.0, -1.2)], True),  # clean +2.25 at worst -0.85
        ([(-0.5, 3.5), (0.0, 3.0)], True),  # worst +3.25 at clean -0.25
        ([(3.0, 0.0), (-0.2, 0.0)], False),  # clean +1.4 on average
        ([(4.5, 0.0), (-0.1, 0.0)], False),  # +2.2 on average, but one seed lost clean accuracy
        ([(2.5, -1.5), (2.5, -1.0)], False),  # the worst case fell by more than a point
        ([(-1.5, 4.0), (-1.0, 4.0)], False),  # worst +4 but clean -1.25
    ],
)
def test_mechanism_verdict_follows_the_rule_written_before_the_runs(differences, moves):
    verdict = clean_price_report.mechanism_verdict(differences)
    assert ("**moves the curve**" in verdict) is moves
    assert ("**does not move the curve**" in verdict) is not moves


def write_run(folder, method, width, seed, epochs_done, clean, worst=None, square=None, lambda_max=1.0):
    """A run folder as experiments/persistent_run.sh commits it (10 epochs planned); evaluated if ``worst``."""
    folder.mkdir(parents=True)
    config = {"method": method, "width": width, "seed": seed, "epochs": 10, "method_options": {}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "log.jsonl").write_text((json.dumps({"test_accuracy": clean}) + "\n") * epochs_done)
    if worst is not None:
        attacks = {"pgd": {"0.01": {"all": worst}}, "square": {"0.01": {"all": square if square else worst}}}
        if square is not None:  # a run evaluated with AutoAttack too: its worst case is below Square's row
            attacks["autoattack"] = {"0.01": {"all": worst}}
        result = {"samples": 500, "clean": clean, "attacks": attacks, "worst": {"0.01": {"all": worst}}}
        result["curvature"] = {"lambda_max": {"mean": lambda_max}}
        (folder / "eval").mkdir()
        (folder / "eval" / "results.json").write_text(json.dumps({"results": {folder.name: result}}))


def test_report_tabulates_capacity_and_judges_only_what_has_finished(tmp_path):
    runs_file = tmp_path / "capacity.runs"
    runs_file.write_text(
        "# name width method seed\nbase_w1 1 base 0\nbase_w1_seed1 1 base 1\nedlcm_w1 1 edlcm 0\n"
        "base_w2 2 base 0\nedlcm_w2 2 edlcm 0\nbase_w4 4 base 0\nedlcm_w4 4 edlcm 0\n"
    )
    capacity, evidence = tmp_path / "capacity" / "runs", tmp_path / "evidence" / "runs"
    write_run(capacity / "base_w1", "base", 1, 0, 10, 0.720, 0.13, lambda_max=20.0)
    write_run(capacity / "base_w1_seed1", "base", 1, 1, 10, 0.718, 0.12)
    write_run(capacity / "edlcm_w1", "edlcm", 1, 0, 10, 0.640, 0.35, lambda_max=1.5)
    write_run(capacity / "base_w2", "base", 2, 0, 10, 0.760, 0.10)
    write_run(capacity / "edlcm_w2", "edlcm", 2, 0, 4, 0.600)  # still training
    # the mechanism's first seed beside the default's, which also ran AutoAttack: compared over the six
    write_run(evidence / "edlcm_every16", "edlcm", 1, 0, 10, 0.630, 0.350, square=0.360)
    write_run(evidence / "edlcm_correct_only", "edlcm", 1, 0, 10, 0.660, 0.345)
    page = tmp_path / "results.md"
    page.write_text(f"# before\n{clean_price_report.BEGIN}\nstale\n{clean_price_report.END}\nafter\n")
    arguments = ["--capacity", str(tmp_path / "capacity"), "--capacity-runs", str(runs_file)]
    arguments += ["--evidence", str(tmp_path / "evidence"), "--page", str(page)]
    clean_price_report.main(arguments)
    text = page.read_text()
    assert text.startswith("# before\n") and text.endswith(f"{clean_price_report.END}\nafter\n") and "stale" not in text
    assert "| 1 | 24,346 | 2.8M | 72.0% / 64.0% | 8.0 | 13.0% / 35.0% | +22.0 | 20 / 1.5 |" in text
    assert "| 2 | 94,762 | 10.3M | EDLCM: training (4/10) |" in text
    assert "| 4 | 373,834 | 39.5M | Base: not started; EDLCM: not started |" in text
    assert "s = 0.2 clean points" in text and "Not judged yet" in text
    assert (
        "| correct_only | edlcm_correct_only | edlcm_every16 | 66.0% (+3.0) | 34.5% (-1.5) | the six attacks |" in text
    )
    assert "| correct_only | edlcm_correct_only_seed1 | edlcm_every16_seed1 | not started |" in text
    assert "`correct_only`: not judged yet (1 of 2 seeds in)." in text
    assert text.count("| 1 | 24,346") == 1 and (tmp_path / "capacity" / "table.md").read_text() in text
    # the rest finishes: now both rules speak
    shutil.rmtree(capacity / "edlcm_w2")
    write_run(capacity / "edlcm_w2", "edlcm", 2, 0, 10, 0.690, 0.32)
    write_run(capacity / "base_w4", "base", 4, 0, 10, 0.790, 0.09)
    write_run(capacity / "edlcm_w4", "edlcm", 4, 0, 10, 0.740, 0.30)
    write_run(evidence / "edlcm_every16_seed1", "edlcm", 1, 1, 10, 0.628, 0.368)
    write_run(evidence / "edlcm_correct_only_seed1", "edlcm", 1, 1, 10, 0.650, 0.361)
    clean_price_report.main(arguments)
    text = page.read_text()
    # C(1) 8.0, C(2) 7.0, C(4) 5.0 <= 8.0 - 2 * 0.5: shrinks; G(4) +21.0 of G(1) +22.0
    assert "By the rule (n = 0.5): the clean cost **shrinks with capacity**, C(1) 8.0, C(2) 7.0, C(4) 5.0" in text
    # seed 0: +3.0 clean at -1.5 (six attacks); seed 1: +2.2 at -0.7: mean +2.6 clean, but -1.1 worst case
    assert "`correct_only`: mean Δclean +2.6, mean Δworst -1.1: **does not move the curve**." in text
