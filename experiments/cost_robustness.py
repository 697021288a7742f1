"""The evidence run's price and payoff: training cost vs worst-case robust accuracy, per run.

    python experiments/cost_robustness.py RESULTS_JSON BENCH_JSON OUT_DIR [--eps 0.01,0.03] [--config small_cnn]

RESULTS_JSON is `edlcm eval`'s results.json; BENCH_JSON a `bench/step.py --methods --json` (or
--record) report. The cost of a run is the step time of its bench mode over the Base run's, both
timed side by side in that one bench run: the epoch times in the runs' own logs are no cost measure
when the runs shared the machine with other work. A run's bench mode follows from the config.json
next to its checkpoint (method, every, max_pull, PGD steps, channels_last); alpha, beta,
max_pull's value and the seed do not change a step's cost. Writes cost_robustness.md (table) and
cost_robustness.png (one point per run and eps) to OUT_DIR.
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def bench_mode(config: dict) -> str:
    """The bench/step.py mode that times one training step of the run described by ``config``."""
    method, options = config["method"], config.get("method_options", {})
    every, bounded = options.get("every", 1), options.get("max_pull") is not None
    if method != "edlcm" and every != 1:
        raise ValueError(f"bench/step.py times {method!r} at every=1 only, got {options}")
    if every not in (1, 16) and bounded:
        raise ValueError(f"bench/step.py combines every and max_pull at every=16 only (the default), got {options}")
    if method == "base":
        name = "plain"
    elif method == "at" and options.get("steps", 1) > 1:
        name = f"at_pgd{options['steps']}"  # PGD adversarial training (bench/harness.py's VARIANT_MODES)
    elif method != "edlcm":
        name = method
    elif every != 1:
        name = f"every{every}" + ("_bounded" if bounded else "")
    elif bounded:
        name = "bounded"  # the bound's value does not change a step's work: both gradients are always taken
    else:
        name = "fused"
    return name + ("_cl" if config.get("channels_last") else "")


def run_config(checkpoint: str) -> dict:
    with open(os.path.join(os.path.dirname(checkpoint), "config.json")) as config:
        return json.load(config)


def step_seconds(bench_json: str, config: str) -> dict[str, float]:
    """Step seconds per bench mode of one configuration of a bench/step.py report (KeyError if absent)."""
    with open(bench_json) as report:
        rows = [row for row in json.load(report)["results"] if row["config"]["name"] == config]
    if not rows:
        raise KeyError(f"{bench_json} has no {config!r} configuration")
    return rows[0]["step_seconds"]


def cost_table(configs: dict[str, dict], seconds: dict[str, float], base: str) -> dict[str, float]:
    """Cost per run (its config.json by name) relative to the run named ``base``, from the step
    ``seconds`` of its bench mode."""
    modes = {name: bench_mode(config) for name, config in configs.items()}
    missing = sorted({mode for mode in modes.values() if mode not in seconds})
    if missing:
        raise ValueError(f"the bench report has no mode {missing}: rerun bench/step.py --methods with them")
    return {name: seconds[mode] / seconds[modes[base]] for name, mode in modes.items()}


def write_report(results: dict, costs: dict, eps_values: list[str], out_dir: str) -> None:
    lines = [
        "| run | cost (x base step) | clean (%) | " + " | ".join(f"worst case eps {e} (%)" for e in eps_values) + " |",
        "|---|---|---|" + "---|" * len(eps_values),
    ]
    for name, result in results.items():
        cells = [f"{100 * result['worst'][e]['all']:.1f}" for e in eps_values]
        lines.append(f"| {name} | {costs[name]:.2f} | {100 * result['clean']:.1f} | " + " | ".join(cells) + " |")
    with open(os.path.join(out_dir, "cost_robustness.md"), "w") as table:
        table.write("\n".join(lines) + "\n")
    # One panel per eps: with twenty-odd runs, three radii in one panel bury each other's labels.
    figure, axes = plt.subplots(len(eps_values), 1, figsize=(8, 4.5 * len(eps_values)), squeeze=False)
    for axis, e in zip(axes[:, 0], eps_values):
        points = [(costs[name], 100 * result["worst"][e]["all"], name) for name, result in results.items()]
        axis.scatter([p[0] for p in points], [p[1] for p in points])
        for cost, accuracy, name in points:
            axis.annotate(name, (cost, accuracy), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set(ylabel=f"worst case at eps {e} (%)", xscale="log")
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("training step cost (x Base)")
    figure.tight_layout()
    figure.savefig(os.path.join(out_dir, "cost_robustness.png"), dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_json")
    parser.add_argument("bench_json")
    parser.add_argument("out_dir")
    parser.add_argument("--eps", default="0.01,0.03", help="comma-separated, as written in results.json")
    parser.add_argument("--config", default="small_cnn", help="the bench configuration the runs trained")
    parser.add_argument("--base", default="base", help="the run that costs 1")
    args = parser.parse_args(argv)
    with open(args.results_json) as report:
        results = json.load(report)["results"]
    try:
        seconds = step_seconds(args.bench_json, args.config)
    except KeyError as missing:
        parser.error(missing.args[0])
    eps_values = args.eps.split(",")
    unknown = [e for e in eps_values if any(e not in result["worst"] for result in results.values())]
    if unknown:
        parser.error(f"--eps {unknown} not evaluated for every run")
    os.makedirs(args.out_dir, exist_ok=True)
    configs = {name: run_config(result["checkpoint"]) for name, result in results.items()}
    write_report(results, cost_table(configs, seconds, args.base), eps_values, args.out_dir)


if __name__ == "__main__":
    main()
