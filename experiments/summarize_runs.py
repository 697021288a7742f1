"""One table from the committed state of persistent runs (experiments/persistent_run.sh): per run, its
options, its training cost (median minutes per epoch, as logged; and, given a bench report's costs, its step
against Base's, timed side by side), clean accuracy (all 10,000 test
images after the last epoch, and on the attacked images), the per-sample worst case over the attacks
at each eps, the strong attacks at the headline eps, lambda_max, and whether the max_ratio cap ever
lowered alpha. A run not yet trained or evaluated is listed as such, not dropped.

    python experiments/summarize_runs.py results/defaults_sweep [--baseline base] [--eps 0.01] > table.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics


def read_run(folder: str) -> dict:
    """What a run's folder holds: its config, per-epoch log and (once evaluated) its results."""
    run = {"name": os.path.basename(folder), "log": [], "result": None, "config": None}
    for name, key in (("config.json", "config"), ("eval/results.json", "result")):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with open(path) as handle:
                run[key] = json.load(handle)
    if run["result"] is not None:
        run["result"] = next(iter(run["result"]["results"].values()))
    log = os.path.join(folder, "log.jsonl")
    if os.path.exists(log):
        with open(log) as handle:
            run["log"] = [json.loads(line) for line in handle if line.strip()]
    return run


def trained(run: dict) -> bool:
    """Trained to its last epoch: a run part-way is not compared."""
    return bool(run["log"]) and len(run["log"]) == run["config"]["epochs"]


def describe(config: dict | None) -> str:
    """The run's method and seed, and the options it set away from the method's current defaults."""
    from edlcm_ext.training.checkpoint import CURVATURE_METHODS, OLD_DEFAULTS
    from edlcm_ext.training.methods import METHODS

    if config is None:
        return "not started"
    defaults, options = METHODS[config["method"]].option_defaults(), config["method_options"]
    if config["method"] in CURVATURE_METHODS:  # a config.json written before format 5 lacks `every`
        options = OLD_DEFAULTS[4] | options
    changed = {k: v for k, v in options.items() if defaults.get(k, object()) != v}
    options = ", ".join(f"{k}={v}" for k, v in changed.items())
    return f"{config['method']} seed {config['seed']}" + (f", {options}" if options else "")


def table(runs: list[dict], eps_headline: str, baseline: str | None, costs: dict[str, float] | None = None) -> str:
    """The table; ``costs`` (run name: step time over Base's, experiments/cost_robustness.py) adds a column."""
    eps_values = sorted({e for run in runs if run["result"] for e in run["result"]["worst"]}, key=float)
    header = (
        ["run", "setting", "epochs", "min/epoch"]
        + (["step (× base)"] if costs is not None else [])
        + ["clean (10k)", "clean (attacked)"]
        + [f"worst case {e}" for e in eps_values]
        + [
            f"APGD-CE {eps_headline}",
            f"APGD-DLR {eps_headline}",
            f"+Square {eps_headline}",
            f"AutoAttack {eps_headline}",
            "mean λ_max",
            "min alpha applied",
        ]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # The baseline a run is compared with: the baseline run of the same seed (training noise moves
    # clean accuracy by points between seeds), else the mean of the baseline runs.
    base_runs = [r for r in runs if baseline and r["result"] and r["log"] and r["config"]["method"] == baseline]

    def versus_baseline(run, value, own: float) -> str:
        if not base_runs or run["config"]["method"] == baseline:
            return ""
        values = [value(r) for r in base_runs if r["config"]["seed"] == run["config"]["seed"]]
        values = [v for v in values or [value(r) for r in base_runs] if v is not None]
        return f" ({own - statistics.mean(values):+.1f})" if values else ""

    for run in runs:
        epochs = f"{len(run['log'])}/{run['config']['epochs']}" if run["config"] else "-"
        clean10k = "-"
        if run["log"]:
            own = 100 * run["log"][-1]["test_accuracy"]
            clean10k = f"{own:.1f}" + (
                versus_baseline(run, lambda r: 100 * r["log"][-1]["test_accuracy"], own) if trained(run) else ""
            )
        applied = [r["alpha_applied"] for r in run["log"] if "alpha_applied" in r]
        # The median, not the mean: an epoch that shared the cores with more jobs is an outlier.
        seconds = [r["seconds"] for r in run["log"] if "seconds" in r]
        cost = f"{statistics.median(seconds) / 60:.1f}" if seconds else "-"
        cells = [run["name"], describe(run["config"]), epochs, cost]
        if costs is not None:
            cells.append(f"{costs[run['name']]:.2f}" if run["name"] in costs else "-")
        cells.append(clean10k)
        result = run["result"]
        if result is None:
            cells += ["not evaluated"] + [""] * (len(header) - len(cells) - 1)
        else:
            cells.append(f"{100 * result['clean']:.1f}")
            for e in eps_values:
                if e not in result["worst"]:
                    cells.append("-")
                    continue
                own = 100 * result["worst"][e]["all"]
                worst_of = lambda r, e=e: 100 * r["result"]["worst"][e]["all"] if e in r["result"]["worst"] else None  # noqa: E731
                cells.append(f"{own:.1f}" + versus_baseline(run, worst_of, own))
            attacks = result["attacks"]
            cells += [
                f"{100 * attacks[a][eps_headline]['all']:.1f}" if a in attacks else "-"
                for a in ("apgd", "apgd-dlr", "square", "autoattack")
            ]
            cells.append(f"{result['curvature']['lambda_max']['mean']:.3g}" if "curvature" in result else "-")
        if result is not None:
            cells.append(f"{min(applied):.3g}" if applied else "-")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        f"Worst case: per sample, over every attack run. In parentheses: the difference to the {baseline} run of the "
        f"same seed (the mean of the {baseline} runs where there is none)."
        if baseline
        else "",
        "min/epoch: the median wall-clock minutes of a training epoch, as the run logged them (on whatever machine "
        "and beside whatever jobs it ran; the run's commits say where).",
        "alpha applied: the epoch mean of the weight L_r got; below alpha only where the max_ratio cap or the max_pull bound engaged.",
    ]
    return "\n".join(lines) + "\n\n" + " ".join(n for n in notes if n) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a folder with runs/<name>/ (e.g. results/defaults_sweep)")
    parser.add_argument("--baseline", default="base", help="method whose mean worst case the gains are taken against")
    parser.add_argument("--eps", default="0.01", help="eps of the per-attack columns")
    parser.add_argument(
        "--order", default=None, help="comma-separated run names, in the table's order (default: sorted)"
    )
    args = parser.parse_args()
    runs_dir = os.path.join(args.results, "runs")
    names = args.order.split(",") if args.order else sorted(os.listdir(runs_dir))
    print(table([read_run(os.path.join(runs_dir, name)) for name in names], args.eps, args.baseline), end="")


if __name__ == "__main__":
    main()
