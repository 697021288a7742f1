"""The clean price's page (docs/results.md, "What EDLCM costs in clean accuracy, and why") from the
committed runs, in one command:

    python experiments/clean_price_report.py [--page docs/results.md]

- the capacity study (experiments/capacity.sh, runs in experiments/capacity.runs, records in
  results/capacity/runs/): per width, the members' size (parameters, multiply-adds per image), Base's
  and EDLCM's clean accuracy, the clean cost C, the worst-case gain G at eps 0.01 and lambda_max, and
  the verdict of the reading rule written on the page before the runs, once every run it needs is in;
- the mechanisms (runs in experiments/cifar10_full.runs, judged against the default's runs of the same
  seeds): their differences per seed and the verdict of their rule.
Writes results/capacity/table.md and the page's part between its two clean_price_report.py markers.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics

EXPERIMENTS = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- clean_price_report.py: begin -->", "<!-- clean_price_report.py: end -->"
HEADLINE = "0.01"
# Each mechanism's runs, each beside the default's run of the same seed (the rule on the page).
MECHANISMS = {
    "correct_only": (("edlcm_correct_only", "edlcm_every16"), ("edlcm_correct_only_seed1", "edlcm_every16_seed1")),
}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summarize_runs = load_script("summarize_runs")
evidence_report = load_script("evidence_report")


def member_size(width: int, arch: str = "small_cnn", num_classes: int = 10) -> tuple[int, int]:
    """(parameters, multiply-adds per 32x32 RGB image) of one member, the multiply-adds counted by
    torch's own FLOP counter (one multiply-add = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edlcm_ext.models import build_model

    model = build_model(arch, num_classes, width=width).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def capacity_plan(runs_file: str) -> list[tuple[str, int, str, int]]:
    """(name, width, method, seed) per line of a capacity runs file (NAME WIDTH METHOD SEED [KEY=VALUE ...])."""
    with open(runs_file) as handle:
        lines = [line.split() for line in handle if line.strip() and not line.startswith("#")]
    return [(fields[0], int(fields[1]), fields[2], int(fields[3])) for fields in lines]


def finished(run: dict) -> bool:
    return run["config"] is not None and summarize_runs.trained(run) and run["result"] is not None


def clean(run: dict) -> float:
    """Clean accuracy (%) on all test images after the last epoch."""
    return 100 * run["log"][-1]["test_accuracy"]


def worst(run: dict, eps: str = HEADLINE) -> float:
    """The per-sample worst case (%) over every attack the run was evaluated with."""
    return 100 * run["result"]["worst"][eps]["all"]


def state(run: dict) -> str:
    """How far a run is, for a table cell."""
    if run["config"] is None:
        return "not started"
    if not summarize_runs.trained(run):
        return f"training ({len(run['log'])}/{run['config']['epochs']})"
    return "evaluating"


def capacity_verdict(cost: dict[int, float], gain: dict[int, float], spread: float) -> str:
    """The capacity study's reading rule (docs/results.md, written before its runs): clean costs C(w)
    and gains G(w) at widths 1, 2, 4, Base's seed spread ``spread`` in clean accuracy at width 1."""
    if spread > 2:
        return (
            f"Base's seed spread is {spread:.1f} points, above 2: this budget is too noisy for the rule, "
            "and the study is to be rerun at 20 epochs on widths 1 and 2 before any conclusion."
        )
    noise = max(spread, 0.5)
    if cost[4] <= cost[1] - 2 * noise and cost[2] <= cost[1] + noise:
        trend = "**shrinks with capacity**"
    elif cost[4] >= cost[1] + 2 * noise:
        trend = "**grows with capacity**"
    else:
        trend = "is **flat within noise** at these widths"
    sentence = (
        f"By the rule (n = {noise:.1f}): the clean cost {trend}, C(1) {cost[1]:.1f}, C(2) {cost[2]:.1f}, "
        f"C(4) {cost[4]:.1f}; the gain G(1) {gain[1]:+.1f}, G(2) {gain[2]:+.1f}, G(4) {gain[4]:+.1f}."
    )
    if "shrinks" in trend and gain[4] < gain[1] / 2:
        sentence += " The gain fell below half of width 1's, so the smaller cost does not make a cheaper method."
    return sentence


def capacity_section(runs: dict[str, dict], plan: list[tuple[str, int, str, int]]) -> str:
    """The capacity table (one row per width, Base and EDLCM of seed 0) and, once all are in, the verdict."""
    widths = sorted({width for _, width, _, _ in plan})
    by_key = {(width, method, seed): runs[name] for name, width, method, seed in plan}
    header = (
        "| width | parameters per member | multiply-adds per image | clean, Base / EDLCM | clean cost C "
        f"| worst case at {HEADLINE}, Base / EDLCM | gain G | mean λ_max, Base / EDLCM |"
    )
    lines = [header, "|" + "---|" * 8]
    cost, gain = {}, {}
    for width in widths:
        params, macs = member_size(width)
        base, edlcm = by_key.get((width, "base", 0)), by_key.get((width, "edlcm", 0))
        cells = [str(width), f"{params:,}", f"{macs / 1e6:.1f}M"]
        if base is not None and edlcm is not None and finished(base) and finished(edlcm):
            cost[width], gain[width] = clean(base) - clean(edlcm), worst(edlcm) - worst(base)
            lambdas = [run["result"]["curvature"]["lambda_max"]["mean"] for run in (base, edlcm)]
            cells += [
                f"{clean(base):.1f}% / {clean(edlcm):.1f}%",
                f"{cost[width]:.1f}",
                f"{worst(base):.1f}% / {worst(edlcm):.1f}%",
                f"{gain[width]:+.1f}",
                f"{lambdas[0]:.3g} / {lambdas[1]:.3g}",
            ]
        else:
            waiting = [f"{m}: {state(r)}" for m, r in (("Base", base), ("EDLCM", edlcm)) if r and not finished(r)]
            cells += ["; ".join(waiting) or "not planned", "", "", "", ""]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = [run for (width, method, _), run in by_key.items() if width == 1 and method == "base"]
    notes = []
    spread = None
    if len(seeds) == 2 and all(finished(run) for run in seeds):
        spread = abs(clean(seeds[0]) - clean(seeds[1]))
        notes.append(f"Base's seed spread at width 1 (seeds 0 and 1): s = {spread:.1f} clean points.")
    if spread is not None and set(cost) >= {1, 2, 4}:
        notes.append(capacity_verdict(cost, gain, spread))
    else:
        notes.append("Not judged yet: the rule needs Base and EDLCM at widths 1, 2 and 4 and Base's second seed.")
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def comparable_worst(run: dict, other: dict, eps: str = HEADLINE) -> tuple[float, str]:
    """``run``'s worst case over the attacks it shares with ``other``: all of them when both ran the
    same, else the six default attacks (Square runs last on what the others left, so its row is their
    running worst case: edlcm_ext.evaluation.evaluate.ON_SURVIVORS)."""
    if sorted(run["result"]["attacks"]) == sorted(other["result"]["attacks"]):
        return worst(run, eps), "every attack"
    return 100 * run["result"]["attacks"]["square"][eps]["all"], "the six attacks"


def mechanism_verdict(differences: list[tuple[float, float]]) -> str:
    """The mechanisms' rule (docs/results.md, written before their runs): per seed (Δclean, Δworst)
    against the default's run of that seed; it moves the curve if the means give Δclean >= 2 with
    Δworst >= -1, or Δworst >= 3 with Δclean >= -1, and both seeds' differences on the axis that
    qualifies are positive."""
    mean_clean = statistics.mean(d[0] for d in differences)
    mean_worst = statistics.mean(d[1] for d in differences)
    by_clean = mean_clean >= 2 and mean_worst >= -1 and all(d[0] > 0 for d in differences)
    by_worst = mean_worst >= 3 and mean_clean >= -1 and all(d[1] > 0 for d in differences)
    verdict = "**moves the curve**" if by_clean or by_worst else "**does not move the curve**"
    return f"mean Δclean {mean_clean:+.1f}, mean Δworst {mean_worst:+.1f}: {verdict}"


def mechanisms_section(runs: dict[str, dict]) -> str:
    lines = [
        "| mechanism | run | beside | clean (Δ) | worst case at 0.01 (Δ) | over |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for mechanism, pairs in MECHANISMS.items():
        differences = []
        for name, default in pairs:
            run, reference = runs[name], runs[default]
            if not (finished(run) and finished(reference)):
                lines.append(f"| {mechanism} | {name} | {default} | {state(run)} | | |")
                continue
            own, theirs = comparable_worst(run, reference), comparable_worst(reference, run)
            differences.append((clean(run) - clean(reference), own[0] - theirs[0]))
            lines.append(
                f"| {mechanism} | {name} | {default} | {clean(run):.1f}% ({differences[-1][0]:+.1f}) "
                f"| {own[0]:.1f}% ({differences[-1][1]:+.1f}) | {own[1]} |"
            )
        if len(differences) == len(pairs):
            verdicts.append(f"`{mechanism}`: {mechanism_verdict(differences)}.")
        else:
            verdicts.append(f"`{mechanism}`: not judged yet ({len(differences)} of {len(pairs)} seeds in).")
    return "\n".join(lines) + "\n\n" + " ".join(verdicts) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capacity", default="results/capacity", help="the capacity study's folder with runs/<name>/")
    parser.add_argument("--capacity-runs", default=os.path.join(EXPERIMENTS, "capacity.runs"))
    parser.add_argument("--evidence", default="results/cifar10_full", help="the mechanisms' folder with runs/<name>/")
    parser.add_argument("--page", default="docs/results.md", help="the page whose generated block is rewritten")
    args = parser.parse_args(argv)
    plan = capacity_plan(args.capacity_runs)
    capacity_runs = {name: summarize_runs.read_run(os.path.join(args.capacity, "runs", name)) for name, *_ in plan}
    names = {name for pairs in MECHANISMS.values() for pair in pairs for name in pair}
    evidence_runs = {name: summarize_runs.read_run(os.path.join(args.evidence, "runs", name)) for name in names}
    capacity = capacity_section(capacity_runs, plan)
    os.makedirs(args.capacity, exist_ok=True)
    with open(os.path.join(args.capacity, "table.md"), "w") as out:
        out.write(capacity)
    block = "\n\n".join(
        [
            "Generated by `python experiments/clean_price_report.py` from the committed runs.",
            "**Capacity** (3× small_cnn, all 50,000 training images, 10 epochs, seed 0; clean on the 10,000 "
            f"test images, the worst case over six attacks at eps {HEADLINE} on a fixed 500; multiply-adds "
            "counted by torch's FLOP counter):",
            capacity.rstrip(),
            "**Mechanisms** (3× small_cnn, the evidence budget, against the default's run of the same seed; "
            "the worst case on the fixed 1,000):",
            mechanisms_section(evidence_runs).rstrip(),
        ]
    )
    with open(args.page) as handle:
        text = handle.read()
    text = evidence_report.replace_block(text, block, args.page, BEGIN, END)
    with open(args.page, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
