"""experiments/cost_robustness.py: each run's cost from the bench mode its config names."""

import importlib.util
import json
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "experiments", "cost_robustness.py")
spec = importlib.util.spec_from_file_location("cost_robustness", SCRIPT)
cost_robustness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cost_robustness)


@pytest.mark.parametrize("config, mode", [
    ({"method": "base"}, "plain"),
    ({"method": "edlcm", "channels_last": True}, "fused_cl"),
    ({"method": "edlcm", "method_options": {"every": 4, "alpha": 10.0}}, "every4"),
    ({"method": "edlcm", "method_options": {"batch_fraction": 0.25}, "channels_last": True}, "fraction25_cl"),
    ({"method": "gal", "method_options": {"beta": 0.5}}, "gal"),
])
def test_bench_mode_of_a_run(config, mode):
    assert cost_robustness.bench_mode(config) == mode


def test_runs_without_a_bench_mode_are_refused():
    with pytest.raises(ValueError, match="every=1, batch_fraction=1 only"):
        cost_robustness.bench_mode({"method": "pdd", "method_options": {"every": 4}})
    with pytest.raises(ValueError, match="combines every and batch_fraction"):
        cost_robustness.bench_mode({"method": "edlcm", "method_options": {"every": 2, "batch_fraction": 0.5}})


def test_table_and_figure_from_eval_and_bench_reports(tmp_path):
    configs = {"base": {"method": "base", "channels_last": True},
               "edlcm_every4": {"method": "edlcm", "method_options": {"every": 4}, "channels_last": True}}
    results = {}
    for index, (name, config) in enumerate(configs.items()):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        worst = {"0.01": {"all": 0.2 + 0.3 * index}, "0.03": {"all": 0.05 * index}}
        results[name] = {"checkpoint": str(tmp_path / name / "checkpoint.pt"), "clean": 0.8 - 0.1 * index, "worst": worst}
    (tmp_path / "results.json").write_text(json.dumps({"results": results}))
    bench = {"results": [{"config": {"name": "resnet18"}, "step_seconds": {"plain_cl": 9.0, "every4_cl": 9.0}},
                         {"config": {"name": "small_cnn"}, "step_seconds": {"plain_cl": 0.08, "every4_cl": 0.16, "fused": 0.5}}]}
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    cost_robustness.main([str(tmp_path / "results.json"), str(tmp_path / "bench.json"), str(tmp_path / "out")])
    table = (tmp_path / "out" / "cost_robustness.md").read_text().splitlines()
    assert table[2] == "| base | 1.00 | 80.0 | 20.0 | 0.0 |"
    assert table[3] == "| edlcm_every4 | 2.00 | 70.0 | 50.0 | 5.0 |"
    assert (tmp_path / "out" / "cost_robustness.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):  # an eps that was not evaluated
        cost_robustness.main([str(tmp_path / "results.json"), str(tmp_path / "bench.json"), str(tmp_path / "out"), "--eps", "0.02"])
    del bench["results"][1]["step_seconds"]["every4_cl"]
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    with pytest.raises(ValueError, match=r"no mode \['every4_cl'\]"):
        cost_robustness.main([str(tmp_path / "results.json"), str(tmp_path / "bench.json"), str(tmp_path / "out")])
