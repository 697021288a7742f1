"""The evidence page from the committed runs of experiments/cifar10_full.sh, in one command:

    python experiments/evidence_report.py [--results results/cifar10_full] [--page docs/results.md]

From each run's committed config.json, log.jsonl and eval/results.json it writes (every run planned
in experiments/cifar10_full.runs is listed, finished or not):
- RESULTS/table.md: every run, as experiments/summarize_runs.py tabulates them;
- RESULTS/table_ii.md: our accuracy next to the paper's Table II (CIFAR-10), and EDLCM's rank per row;
- RESULTS/cost_robustness.md and .png: each evaluated run's training-step cost (a bench/step.py report,
  every mode timed side by side) against its worst case;
- the part of the page between its two generated-block markers; the prose around them is written by
  hand, from these numbers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- evidence_report.py: begin -->", "<!-- evidence_report.py: end -->"
# The paper's Table II, CIFAR-10 columns: accuracy (%) under white-box attacks at L-inf eps in [0, 1]
# pixel units, 3x ResNet-18, in the order of PAPER_METHODS. Its APGD is APGD-CE (our "apgd").
PAPER_METHODS = ("base", "deg", "adp", "pdd", "edlcm")
PAPER_TABLE_II = {
    ("clean", "-"): (95.950, 95.630, 95.850, 95.730, 94.730),
    ("fgsm", "0.005"): (74.987, 74.736, 82.556, 82.994, 89.718),
    ("fgsm", "0.01"): (59.541, 45.728, 73.333, 71.472, 75.525),
    ("bim", "0.005"): (62.011, 33.640, 73.438, 75.159, 88.179),
    ("bim", "0.01"): (28.463, 7.268, 54.846, 53.881, 71.127),
    ("pgd", "0.005"): (70.641, 36.673, 77.413, 80.111, 91.553),
    ("pgd", "0.01"): (36.196, 6.766, 59.113, 60.086, 79.289),
    ("apgd", "0.005"): (32.371, 1.129, 43.349, 56.450, 85.437),
    ("apgd", "0.01"): (2.731, 0.0, 8.534, 19.263, 59.127),
}
# Rows the paper does not have: the stronger attacks and the per-sample worst case (the headline).
EXTRA_ROWS = ("apgd-dlr", "square", "autoattack", "worst")
ROW_LABELS = {"clean": "No attack (all 10,000 test images)", "worst": "**worst case** (per sample)"}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summarize_runs = load_script("summarize_runs")
cost_robustness = load_script("cost_robustness")


def planned_runs(runs_file: str) -> list[str]:
    """The run names of a runs file (one NAME METHOD SEED [KEY=VALUE ...] per line, # comments)."""
    with open(runs_file) as handle:
        return [line.split()[0] for line in handle if line.strip() and not line.startswith("#")]


def finished_runs(names: list[str], runs: dict[str, dict]) -> dict[str, dict]:
    """The runs trained to their last epoch and evaluated, in the planned order: only these are compared."""
    return {
        name: runs[name] for name in names if runs[name]["result"] is not None and summarize_runs.trained(runs[name])
    }


def accuracy(run: dict, attack: str, eps: str) -> float | None:
    """A finished run's accuracy (%) in one row: clean on all test images, else over the attacked ones."""
    if attack == "clean":
        return 100 * run["log"][-1]["test_accuracy"]
    by_eps = run["result"]["worst"] if attack == "worst" else run["result"]["attacks"].get(attack, {})
    return 100 * by_eps[eps]["all"] if eps in by_eps else None


def rank_of_edlcm(values: list[float | None]) -> int | None:
    """EDLCM's place among PAPER_METHODS in one row (1: the most accurate; ties share the better place)."""
    if any(value is None for value in values):
        return None
    edlcm = values[PAPER_METHODS.index("edlcm")]
    return 1 + sum(value > edlcm for value in values)


def table_ii(finished: dict[str, dict], eps_values: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Our accuracy (``finished`` runs by name) next to the paper's per method and row, and EDLCM's rank in
    both (ours, paper) per row."""
    from edlcm_ext.evaluation.attacks import LABELS

    header = ["Attack", "eps"] + [f"{m}: ours (paper)" for m in PAPER_METHODS] + ["EDLCM's rank: ours (paper)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [("clean", "-")] + [(a, e) for a in ("fgsm", "bim", "pgd", "apgd") for e in eps_values]
    rows += [(a, e) for a in EXTRA_ROWS for e in eps_values]
    ranks = []
    for attack, eps in rows:
        ours = [accuracy(finished[m], attack, eps) if m in finished else None for m in PAPER_METHODS]
        paper = PAPER_TABLE_II.get((attack, eps))
        if attack in EXTRA_ROWS and all(value is None for value in ours):
            continue  # an attack no run was evaluated with
        cells = [
            ("-" if value is None else f"{value:.1f}") + (f" ({paper[i]:.1f})" if paper else "")
            for i, value in enumerate(ours)
        ]
        rank, paper_rank = rank_of_edlcm(ours), rank_of_edlcm(list(paper)) if paper else None
        if rank is not None and paper_rank is not None and attack != "clean":
            ranks.append((rank, paper_rank))
        rank_cell = ("-" if rank is None else str(rank)) + (f" ({paper_rank})" if paper_rank else "")
        label = ROW_LABELS.get(attack, LABELS.get(attack, attack))
        lines.append(f"| {label} | {eps} | " + " | ".join(cells) + f" | {rank_cell} |")
    return "\n".join(lines) + "\n", ranks


def findings(finished: dict[str, dict], names: list[str], ranks: list[tuple[int, int]], headline: str) -> list[str]:
    """What the finished runs show against the paper's claims, as plain sentences (none for a run not finished)."""
    done = list(finished)
    waiting = [name for name in names if name not in finished]
    lines = [
        f"Finished and evaluated: {len(done)} of {len(names)} planned runs"
        + (f" ({', '.join(done)})." if done else ".")
    ]
    if waiting:
        lines.append(f"Not finished, so not compared: {', '.join(waiting)}.")
    if "base" in finished and "edlcm" in finished:
        base, edlcm = finished["base"], finished["edlcm"]
        clean = [accuracy(run, "clean", "-") for run in (edlcm, base)]
        worst = [accuracy(run, "worst", headline) for run in (edlcm, base)]
        paper_clean = PAPER_TABLE_II["clean", "-"]
        lines.append(
            f"EDLCM against Base: clean accuracy {clean[0]:.1f}% against {clean[1]:.1f}% ({clean[0] - clean[1]:+.1f}; "
            f"the paper: {paper_clean[4] - paper_clean[0]:+.1f}); worst case at eps {headline} "
            f"{worst[0]:.1f}% against {worst[1]:.1f}% ({worst[0] - worst[1]:+.1f})."
        )
    if ranks:
        first = sum(rank == 1 for rank, _ in ranks)
        paper_first = sum(paper_rank == 1 for _, paper_rank in ranks)
        lines.append(
            f"EDLCM is the most accurate of the paper's five methods in {first} of the {len(ranks)} attacked rows "
            f"the paper also reports (the paper: {paper_first} of {len(ranks)})."
        )
    return lines


def generated_block(results_dir: str, page: str, names: list[str], runs: dict[str, dict], args) -> str:
    """The page's generated part: findings, both tables and (once Base is in) the cost figure."""
    eps_values = args.eps.split(",")
    evaluated = finished_runs(names, runs)
    table_text, ranks = table_ii(evaluated, eps_values)
    costs = None
    if "base" in evaluated:
        configs = {name: run["config"] for name, run in evaluated.items()}
        costs = cost_robustness.cost_table(configs, cost_robustness.step_seconds(args.bench, args.config), "base")
    all_runs = summarize_runs.table([runs[name] for name in names], args.headline, "base", costs)
    for name, text in (("table.md", all_runs), ("table_ii.md", table_text)):
        with open(os.path.join(results_dir, name), "w") as out:
            out.write(text)
    link = os.path.relpath(results_dir, os.path.dirname(os.path.abspath(page)))
    attacked = sorted({run["result"]["samples"] for run in evaluated.values()})
    parts = [
        f"Generated by `python experiments/evidence_report.py` from the committed runs in `{link}/runs/`: "
        "% accuracy on CIFAR-10 (JPEG re-encoded)"
        + (f", attacks on a fixed {' or '.join(f'{n:,}' for n in attacked)} test images." if attacked else "."),
        "\n".join(f"- {line}" for line in findings(evaluated, names, ranks, args.headline)),
        "### Next to the paper's Table II (CIFAR-10; the paper: 3× ResNet-18 on the original images)",
        table_text.rstrip(),
        "### Every run",
        all_runs.rstrip(),
    ]
    if costs is not None:
        cost_robustness.write_report(
            {name: run["result"] for name, run in evaluated.items()}, costs, eps_values, results_dir
        )
        write_trade_curve(evaluated, args.headline, os.path.join(results_dir, "trade_curve.png"))
        parts += [
            f"### Cost and robustness (step cost from `{os.path.relpath(args.bench)}`, {args.config})",
            f"![cost vs worst case]({link}/cost_robustness.png)",
            f"### Clean accuracy against the worst case at eps {args.headline}",
            f"![clean vs worst case]({link}/trade_curve.png)",
        ]
    else:
        parts.append("The cost–robustness figure waits for the Base run.")
    return "\n\n".join(parts)


def write_trade_curve(evaluated: dict[str, dict], headline: str, path: str) -> None:
    """Clean accuracy on the 10,000 test images (the last epoch's) against the worst case at eps
    ``headline``, one point per evaluated run: where each method and setting sits on the trade."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for name, run in evaluated.items():
        clean, worst = 100 * run["log"][-1]["test_accuracy"], 100 * run["result"]["worst"][headline]["all"]
        edlcm = run["config"]["method"].startswith("edlcm")
        axis.scatter(clean, worst, marker="o" if edlcm else "s", color="C0" if edlcm else "C1")
        axis.annotate(name, (clean, worst), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axis.set(xlabel="clean accuracy, 10,000 test images (%)", ylabel=f"worst-case accuracy at eps {headline} (%)")
    axis.grid(alpha=0.3)
    axis.set_title("EDLCM settings (circles) and other methods (squares)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def replace_block(text: str, block: str, page: str, begin: str = BEGIN, end: str = END) -> str:
    """``text`` with what lies between its one ``begin`` line and its one ``end`` line replaced by ``block``."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"--page {page} needs one {begin} line and one {end} line after it")
    head, rest = text.split(begin)
    return head + begin + "\n" + block + "\n" + end + rest.split(end, 1)[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results/cifar10_full", help="folder with runs/<name>/")
    parser.add_argument("--runs-file", default=os.path.join(EXPERIMENTS, "cifar10_full.runs"))
    parser.add_argument("--page", default="docs/results.md", help="the page whose generated block is rewritten")
    parser.add_argument("--bench", default="bench/results/step_2026-12-03_cpu_small_cnn_methods.json")
    parser.add_argument("--config", default="small_cnn", help="the bench configuration the runs trained")
    parser.add_argument("--eps", default="0.005,0.01,0.02", help="eps values tabulated (Table II has 0.005 and 0.01)")
    parser.add_argument("--headline", default="0.01", help="eps of the headline worst case")
    args = parser.parse_args(argv)
    names = planned_runs(args.runs_file)
    runs = {name: summarize_runs.read_run(os.path.join(args.results, "runs", name)) for name in names}
    with open(args.page) as handle:
        text = handle.read()
    text = replace_block(text, generated_block(args.results, args.page, names, runs, args), args.page)
    with open(args.page, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
